// The end of the OAuth popup: tells the page that opened it how the connection went, then
// closes. The outcome is the page's JSON data block; without an opener (popups blocked, or
// the provider's opener policy) the page's own words stay.
(function () {
  var block = document.getElementById('harmony-oauth');
  if (!block || !window.opener) { return; }
  var message = JSON.parse(block.textContent);
  window.opener.postMessage(message, window.location.origin);
  window.close();
})();
