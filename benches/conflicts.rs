//! Conflict prediction for 20 active tasks with 200-file changes each, against
//! the naive way of asking git the same question, measured in the same run.
//!
//! The layout is the server's: a bare mirror at `<data>/repos/bench/app.git`
//! and one worktree per task at `<data>/worktrees/bench/app/<task>`, with the
//! process-wide confiner installed on `<data>`, so every git runs in the jail
//! it gets in production (a task's for its worktree, the repository's for the
//! mirror). What is timed is one branch poll's prediction work:
//! `conflicts::look_at_worktree` for every worktree (what the poller reads
//! anyway) plus `conflicts::predict`, the same functions the poller calls.
//!
//! The repository has `(tasks + 1) × files / 2` files of 40 lines. Task `i`
//! edits one line of `files` files starting at file `i × files / 2`, so each
//! task shares half its files with its neighbours; tasks `2k` and `2k + 1`
//! edit the same line (they conflict), `2k + 1` and `2k + 2` different lines
//! (a clean content merge of the files they share). Even tasks commit, odd
//! tasks leave everything uncommitted (plus an untracked file). The base moved
//! after the tasks branched: line 1 of the first 50 files, which task 0 edits too.
//!
//! Rounds:
//! - **cold**: an empty cache (the first poll after a restart);
//! - **unchanged**: the same cache, nothing moved (every later poll, mostly);
//! - **one task edited**: one uncommitted task changes one more file.
//!
//! The baseline is what git alone costs without batching or cache: for every
//! uncommitted worktree `git stash create` (a commit of its state), then one
//! `git merge-tree --write-tree` process per pair of tasks (all of them) and
//! per task against the base. Every round's answer is checked.
//!
//! Knobs: `BENCH_TASKS` (20), `BENCH_FILES` (200), `BENCH_ROUNDS` (5),
//! `BENCH_CONFINE` (1; 0 runs git unconfined, to see what the jails cost).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fmt_us, git, knob, machine_line, print_table, tempdir};
use kiln::integrations::conflicts::{self, Candidate, Side};

const LINES: usize = 40;

fn file_name(n: usize) -> String {
    format!("src/m{:02}/f{n:05}.txt", n % 50)
}

fn content(n: usize, edit: Option<(usize, &str)>) -> String {
    (0..LINES)
        .map(|l| match edit {
            Some((line, who)) if line == l => format!("file {n} line {l} edited by {who}\n"),
            _ => format!("file {n} line {l}\n"),
        })
        .collect()
}

/// Task `i`'s line: tasks 2k and 2k + 1 share it.
fn line_of(i: usize) -> usize {
    (i / 2 % 3) * 12
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let tasks = knob("BENCH_TASKS", 20).max(2);
    let files = knob("BENCH_FILES", 200).max(4);
    let rounds = knob("BENCH_ROUNDS", 5).max(1);
    let repo_files = (tasks + 1) * files / 2;
    let dir = tempdir();
    let data = dir.path().join("data");
    let config = kiln::config::Config::load(None).expect("config");
    let mut sandboxes = config.sandboxes.clone();
    if knob("BENCH_CONFINE", 1) == 0 {
        sandboxes.confine = kiln::config::ConfineMode::Off;
    }
    let confiner = kiln::confine::Confiner::new(&sandboxes, &data, &[]).install();
    println!("# Conflict prediction: {tasks} tasks × {files} changed files ({repo_files} files in the repository)\n");
    println!("{}; confined: {:?}\n", machine_line(), confiner.status().confined);

    // The source: every file, then the base's later commit.
    let t0 = Instant::now();
    let source = dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    git(&source, &["-c", "init.defaultBranch=main", "init", "-q"]);
    for n in 0..repo_files {
        let path = source.join(file_name(n));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(n, None)).unwrap();
    }
    git(&source, &["add", "."]);
    git(&source, &["commit", "-q", "-m", "first"]);
    git(&source, &["branch", "fork"]);
    for n in 0..50.min(repo_files) {
        std::fs::write(source.join(file_name(n)), content(n, Some((0, "main")))).unwrap();
    }
    git(&source, &["commit", "-q", "-am", "main moves on"]);
    let mirror = data.join("repos/bench/app.git");
    std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    git(dir.path(), &["clone", "-q", "--bare", source.to_str().unwrap(), mirror.to_str().unwrap()]);
    let base = git(&mirror, &["rev-parse", "refs/heads/main"]);
    let bases: HashMap<String, String> = [("main".to_string(), base.clone())].into();

    let trees = data.join("worktrees/bench/app");
    let mut worktrees = Vec::new();
    for i in 0..tasks {
        let id = format!("t{i:02}");
        let path = trees.join(&id);
        git(&mirror, &["worktree", "add", "-q", "-b", &format!("kiln/{id}"), path.to_str().unwrap(), "fork"]);
        for n in (i * files / 2)..(i * files / 2 + files) {
            std::fs::write(path.join(file_name(n)), content(n, Some((line_of(i), &id)))).unwrap();
        }
        if i % 2 == 0 {
            git(&path, &["commit", "-q", "-am", "task work"]);
        } else {
            std::fs::write(path.join(format!("notes-{id}.txt")), "untracked\n").unwrap();
        }
        worktrees.push((id, path));
    }
    println!("setup: {:.1} s\n", t0.elapsed().as_secs_f64());

    let look = |worktrees: &[(String, PathBuf)]| -> Vec<Candidate> {
        // As the branch poller reads them: a few at a time.
        let seen = conflicts::in_parallel(worktrees, |(_, path)| conflicts::look_at_worktree(path).expect("look at the worktree"));
        worktrees
            .iter()
            .zip(seen)
            .map(|((id, path), seen)| Candidate {
                task: id.clone(),
                base_branch: "main".into(),
                side: Side::Worktree { path: path.clone(), seen: seen.expect("a reader") },
            })
            .collect()
    };
    // The answer every round must give.
    let expected: Vec<(String, String, usize)> = {
        let mut v: Vec<(String, String, usize)> =
            (0..tasks / 2).map(|k| (format!("t{:02}", 2 * k), format!("t{:02}", 2 * k + 1), files / 2)).collect();
        v.push(("t00".into(), "base".into(), 50.min(files)));
        v.sort();
        v
    };
    let check = |p: &conflicts::Prediction| {
        let got: Vec<(String, String, usize)> = p.conflicts.iter().map(|f| (f.task.clone(), f.other.clone(), f.files.len())).collect();
        assert_eq!(got, expected, "the predicted conflicts");
        assert_eq!(p.evaluated.len(), tasks, "every task looked at");
    };

    let mut rows = Vec::new();
    // Cold.
    let mut cold = Vec::new();
    let mut cache = conflicts::Cache::default();
    let mut cold_prediction = None;
    for _ in 0..rounds {
        cache = conflicts::Cache::default();
        let t = Instant::now();
        let candidates = look(&worktrees);
        let looked = t.elapsed();
        let p = conflicts::predict(&mirror, &candidates, &bases, &mut cache);
        cold.push((looked, t.elapsed() - looked));
        check(&p);
        cold_prediction = Some(p);
    }
    let cold_p = cold_prediction.unwrap();
    // Unchanged.
    let mut warm = Vec::new();
    let mut warm_p = None;
    for _ in 0..rounds {
        let t = Instant::now();
        let candidates = look(&worktrees);
        let looked = t.elapsed();
        let p = conflicts::predict(&mirror, &candidates, &bases, &mut cache);
        warm.push((looked, t.elapsed() - looked));
        check(&p);
        warm_p = Some(p);
    }
    let warm_p = warm_p.unwrap();
    // One task edited: task 1 (uncommitted) changes one more of its files, in a
    // line nobody else edits.
    let mut one = Vec::new();
    let mut one_p = None;
    let (_, w1) = &worktrees[1];
    for r in 0..rounds {
        let path = w1.join(file_name(files / 2 + r));
        let text = std::fs::read_to_string(&path).unwrap().replacen(&format!("line {}\n", LINES - 1), &format!("line {} (round {r})\n", LINES - 1), 1);
        std::fs::write(&path, text).unwrap();
        let t = Instant::now();
        let candidates = look(&worktrees);
        let looked = t.elapsed();
        let p = conflicts::predict(&mirror, &candidates, &bases, &mut cache);
        one.push((looked, t.elapsed() - looked));
        check(&p);
        one_p = Some(p);
    }
    let one_p = one_p.unwrap();

    // The baseline: no batch, no cache, no pre-filter.
    let mut naive = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut commits = Vec::new();
        for (_, path) in &worktrees {
            let state = git(path, &["stash", "create"]);
            commits.push(if state.is_empty() { git(path, &["rev-parse", "HEAD"]) } else { state });
        }
        let mut conflicted = 0;
        let mut merge = |a: &str, b: &str| {
            let out = Command::new("git").args(["merge-tree", "--write-tree", "--name-only", a, b]).current_dir(&mirror).output().expect("git");
            if out.status.code() == Some(1) {
                conflicted += 1;
            }
        };
        for i in 0..commits.len() {
            merge(&commits[i], &base);
            for j in i + 1..commits.len() {
                merge(&commits[i], &commits[j]);
            }
        }
        naive.push(t.elapsed());
        // The naive way also sees task-vs-task conflicts that are really the
        // base's (a task forked before main moved, merged with one that
        // carries it); it finds at least what prediction finds.
        assert!(conflicted >= expected.len(), "the baseline found {conflicted} conflicts");
    }
    let naive_m = median(naive);
    let all_pairs = tasks * (tasks - 1) / 2 + tasks;
    let row = |name: &str, times: Vec<(Duration, Duration)>, p: &conflicts::Prediction| {
        let looked = median(times.iter().map(|t| t.0).collect());
        let predicted = median(times.iter().map(|t| t.1).collect());
        let d = median(times.iter().map(|t| t.0 + t.1).collect());
        vec![
            name.to_string(),
            fmt_us(looked.as_micros() as u64),
            fmt_us(predicted.as_micros() as u64),
            fmt_us(d.as_micros() as u64),
            p.states_built.to_string(),
            p.merges_run.to_string(),
            format!("{:.2}×", d.as_secs_f64() / naive_m.as_secs_f64()),
        ]
    };
    rows.push(row("cold (empty cache)", cold, &cold_p));
    rows.push(row("unchanged", warm, &warm_p));
    rows.push(row("one task edited", one, &one_p));
    rows.push(vec![
        format!("baseline: stash create + {all_pairs} merge-tree runs"),
        "-".into(),
        "-".into(),
        fmt_us(naive_m.as_micros() as u64),
        (tasks / 2).to_string(),
        all_pairs.to_string(),
        "1.00×".into(),
    ]);
    println!("Median of {rounds} rounds; a round includes reading every worktree (`look_at_worktree`).\n");
    print_table(&["round", "read worktrees", "predict", "total", "states built", "merges run", "vs baseline"], &rows);
    for (name, p) in [("cold", &cold_p), ("one task edited", &one_p)] {
        println!("{name}, last round: states and file lists {}, merges {}", fmt_us(p.prepare_time.as_micros() as u64), fmt_us(p.merge_time.as_micros() as u64));
    }
    println!("\n{} conflicts predicted (pairs of tasks and against the base); {} merges kept in the cache.", expected.len(), cache.merges());
}
