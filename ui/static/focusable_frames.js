// A chart frame that scrolls sideways must be reachable by keyboard (Tab, then the arrow
// keys scroll it): give every chart frame a tab stop and a name as it appears.
if (!window.lensFramesWatched) {
  window.lensFramesWatched = true;
  const mark = () => document.querySelectorAll('[data-testid=stVegaLiteChart]:not([tabindex])').forEach(f => {
    f.setAttribute('tabindex', '0');
    f.setAttribute('aria-label', 'Chart (scroll sideways with the arrow keys when it is wider than the page)');
  });
  new MutationObserver(mark).observe(document.body, {childList: true, subtree: true});
  mark();
}
