// The status page's only script: refresh the live part from api/page every
// few seconds (not while the tab is hidden), the 'sync now' button (POST
// sync, the only request that changes anything) and the 24 h / 7 d toggle.
// Relative URLs only: the page must work with the clinic offline.
(function () {
  'use strict';
  var live = document.getElementById('live');
  var note = document.getElementById('note');
  var button = document.getElementById('sync');
  var EVERY_MS = 5000;
  var busy = false;

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch('api/page', { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) { throw new Error('HTTP ' + r.status); }
        return r.json();
      })
      .then(function (d) {
        if (!d) { return; }
        live.innerHTML = d.html;
        document.title = d.title;
        document.body.setAttribute('data-verdict', d.verdict);
        note.textContent = '';
      })
      .catch(function () { note.textContent = note.getAttribute('data-offline'); })
      .then(function () { busy = false; });
  }

  button.addEventListener('click', function () {
    button.disabled = true;
    fetch('sync', { method: 'POST', credentials: 'same-origin' })
      .then(function (r) { note.textContent = r.ok ? button.getAttribute('data-done') : button.getAttribute('data-failed'); })
      .catch(function () { note.textContent = button.getAttribute('data-failed'); })
      .then(function () {
        button.disabled = false;
        setTimeout(refresh, 1500);
      });
  });

  var ranges = document.querySelectorAll('[data-range]');
  Array.prototype.forEach.call(ranges, function (b) {
    b.addEventListener('click', function () {
      Array.prototype.forEach.call(ranges, function (o) { o.classList.toggle('on', o === b); });
      document.body.classList.toggle('show-r7d', b.getAttribute('data-range') === 'r7d');
    });
  });

  document.addEventListener('visibilitychange', refresh);
  setInterval(refresh, EVERY_MS);
})();
