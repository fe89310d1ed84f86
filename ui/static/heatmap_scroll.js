// The Lens heatmap's cells scroll inside their own frame. A click reruns the page and draws a
// new chart (its key names the cell), which would open scrolled back to its start: open it
// where the last one was scrolled, then bring the outlined cell into view. A first drawing
// opens at the right end: the prompt's last positions and the default cell.
if (!window.lensHeatmapWatched) {
  window.lensHeatmapWatched = true;
  const placed = new WeakSet();
  // A narrower frame (a smaller window, the sidebar opening) can hide the outlined cell: bring it back.
  const resized = new ResizeObserver(entries => entries.forEach(entry => reveal(entry.target)));
  const place = () => document.querySelectorAll('[class*=st-key-heatmap_] [data-testid=stVegaLiteChart]').forEach(frame => {
    const svg = frame.querySelector('svg.marks');
    if (!svg || placed.has(svg) || !svg.querySelector('g.mark-rect')) return;
    placed.add(svg);
    const room = frame.scrollWidth - frame.clientWidth;
    frame.scrollLeft = window.lensHeatmapLeft === undefined ? room : Math.min(window.lensHeatmapLeft, room);
    reveal(frame);
    frame.addEventListener('scroll', () => { window.lensHeatmapLeft = frame.scrollLeft; });
    resized.observe(frame);
  });
  // The selected cell's outline is the chart's last rect layer (lens.charts.heatmap).
  const reveal = frame => {
    const rects = frame.querySelectorAll('svg.marks g.mark-rect');
    const cell = rects.length > 1 ? rects[rects.length - 1].getBoundingClientRect() : null;
    const view = frame.getBoundingClientRect();
    if (cell && cell.width > 0) {
      if (cell.left < view.left) frame.scrollLeft -= view.left - cell.left + 8;
      else if (cell.right > view.right) frame.scrollLeft += cell.right - view.right + 8;
    }
    window.lensHeatmapLeft = frame.scrollLeft;
  };
  new MutationObserver(place).observe(document.body, {childList: true, subtree: true, attributes: true,
    attributeFilter: ['width']});
  place();
}
