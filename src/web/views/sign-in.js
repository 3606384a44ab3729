// The sign-in page: the link from `kiln dashboard` (when it arrives from another
// site, a button confirms it), or a pasted token. The token goes in a POST body,
// never in a URL, and is not kept by the page: the server answers with an
// HttpOnly cookie.

import { post } from '../lib/api.js';
import { h, replace } from '../lib/dom.js';

const ERRORS = {
  sign_in_code_invalid: 'This sign-in link is not valid: it was used already, or it is older than 60 seconds. Run `kiln dashboard` for a new one.',
};

export function signInView(main, app, done) {
  const params = new URLSearchParams(location.search);
  const code = params.get('code');
  const error = params.get('error');
  const status = h('p.error', { role: 'alert', hidden: !error }, error ? ERRORS[error] || 'Signing in failed.' : '');
  const ended = params.has('ended') ? h('p.notice', { role: 'status' }, 'You are signed out.') : null;

  const fail = (e) => {
    status.hidden = false;
    status.textContent = ERRORS[e.code] || e.message;
  };

  let confirm = null;
  if (code) {
    const button = h('button.primary', { type: 'button' }, 'Continue to Kiln');
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        await post('/v1/dashboard/sessions', { code });
        await done();
      } catch (e) {
        button.disabled = false;
        fail(e);
      }
    });
    confirm = h('section.card-panel',
      h('h2', 'Sign in with this link?'),
      h('p.muted', 'You followed a sign-in link from another page. Continue only if you asked for it with ', h('code', 'kiln dashboard'), '.'),
      button);
  }

  const input = h('input#token', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, placeholder: 'kiln_…' });
  const submit = h('button.primary', { type: 'submit' }, 'Sign in');
  const form = h('form.card-panel', {
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      try {
        await post('/v1/dashboard/sessions', { token: input.value.trim() });
        input.value = '';
        await done();
      } catch (err) {
        submit.disabled = false;
        fail(err);
        input.focus();
      }
    },
  },
  h('h2', 'Sign in with a token'),
  h('label', { for: 'token' }, 'Organization token or admin token'),
  input,
  h('p.muted.small', 'The token is sent once to sign you in and is not stored in this browser.'),
  submit);

  replace(main,
    h('div.sign-in',
      h('div.sign-in-head', h('span.logo.big', { 'aria-hidden': 'true' }, 'K'), h('h1', 'Sign in to Kiln')),
      ended, status, confirm,
      h('section.card-panel',
        h('h2', 'With a link'),
        h('p', 'On a machine with the ', h('code', 'kiln'), ' CLI, run'),
        h('pre', h('code', 'kiln dashboard')),
        h('p.muted.small', 'It prints a sign-in link (and opens it where it can). Each link works once, within 60 seconds.')),
      form));
  if (!code) input.focus();
  return () => {};
}
