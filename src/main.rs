fn main() {
    // git runs this binary as its GIT_ASKPASS when Kiln pushes or fetches with a
    // token: answer the prompt from the environment, never from arguments.
    if std::env::var_os("KILN_GIT_ASKPASS").is_some() {
        let prompt = std::env::args().nth(1).unwrap_or_default();
        match kiln::integrations::git::askpass_answer(&prompt) {
            Some(answer) => {
                println!("{answer}");
                std::process::exit(0);
            }
            None => std::process::exit(1),
        }
    }
    std::process::exit(kiln::cli::main());
}
