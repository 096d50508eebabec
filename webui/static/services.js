// DebVisor console: the services pages (the health page's live panel uses
// htmx's SSE extension instead). Everything here is an enhancement; the
// pages work without it (plain links and forms).
"use strict";

(function () {
  // Filter forms with data-autosubmit submit when a select changes.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
    select.addEventListener("change", function () {
      select.form.submit();
    });
  });

  // Unit actions: confirm in a dialog and POST directly, instead of going
  // through the confirmation page.
  document.querySelectorAll(".unit-actions").forEach(function (box) {
    box.querySelectorAll("a[data-action]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        if (!window.confirm(link.dataset.confirm)) {
          return;
        }
        var form = document.createElement("form");
        form.method = "post";
        form.action = box.dataset.post;
        [["csrf", box.dataset.csrf], ["action", link.dataset.action]].forEach(function (pair) {
          var input = document.createElement("input");
          input.type = "hidden";
          input.name = pair[0];
          input.value = pair[1];
          form.appendChild(input);
        });
        document.body.appendChild(form);
        form.submit();
      });
    });
  });

  // Live journal tail: each "line" event carries one server-rendered,
  // escaped <li>.
  var MAX_LINES = 1000;
  document.querySelectorAll("[data-journal-events]").forEach(function (list) {
    var source = new EventSource(list.dataset.journalEvents);
    source.addEventListener("line", function (event) {
      var nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      var empty = list.querySelector(".log-empty");
      if (empty) {
        empty.remove();
      }
      list.insertAdjacentHTML("beforeend", event.data);
      while (list.children.length > MAX_LINES) {
        list.firstElementChild.remove();
      }
      if (nearBottom) {
        list.scrollTop = list.scrollHeight;
      }
    });
    list.scrollTop = list.scrollHeight;
    window.addEventListener("pagehide", function () {
      source.close();
    });
  });
})();
