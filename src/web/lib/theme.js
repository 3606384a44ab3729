// Light, dark, or the system's choice (the default). The choice is kept in
// localStorage and applied as `data-theme` on <html>, which style.css reads; with
// no choice the page follows prefers-color-scheme.

const KEY = 'kiln:theme';
export const THEMES = ['system', 'light', 'dark'];

/** The stored choice: 'system', 'light' or 'dark'. */
export function themeChoice() {
  try {
    const v = localStorage.getItem(KEY);
    return THEMES.includes(v) ? v : 'system';
  } catch (e) {
    return 'system';
  }
}

/** Applies a choice now and keeps it; tells the page (`kiln:theme`). */
export function setTheme(choice) {
  if (!THEMES.includes(choice)) choice = 'system';
  try {
    if (choice === 'system') localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, choice);
  } catch (e) {
    // Blocked storage: the choice lasts as long as the page.
  }
  applyTheme(choice);
}

export function applyTheme(choice = themeChoice()) {
  const root = document.documentElement;
  if (choice === 'system') delete root.dataset.theme;
  else root.dataset.theme = choice;
  window.dispatchEvent(new CustomEvent('kiln:theme', { detail: { choice, dark: isDark() } }));
}

/** Whether the page shows dark now. */
export function isDark() {
  const forced = document.documentElement.dataset.theme;
  if (forced) return forced === 'dark';
  return matchMedia('(prefers-color-scheme: dark)').matches;
}

// Follow the system while no choice is made.
matchMedia('(prefers-color-scheme: dark)').addEventListener?.('change', () => {
  if (themeChoice() === 'system') applyTheme('system');
});
