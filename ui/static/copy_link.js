// "Copy link": the address of this view (every setting in force is in it) to the clipboard.
// The clipboard API needs a secure page (https or localhost); elsewhere a selected text field is copied.
if (!window.lensCopyLinkWatched) {
  window.lensCopyLinkWatched = true;
  document.addEventListener('click', async event => {
    const button = event.target.closest('.lens-copy-link');
    if (!button) return;
    const url = window.location.href;
    let copied = false;
    try {
      await navigator.clipboard.writeText(url);
      copied = true;
    } catch (error) {
      const field = document.createElement('textarea');
      field.value = url;
      document.body.appendChild(field);
      field.select();
      copied = document.execCommand('copy');
      field.remove();
    }
    const status = button.parentElement.querySelector('.lens-copy-status');
    if (status) status.textContent = copied ? 'Link copied.' : 'Copy the address bar: the browser refused.';
  });
}
