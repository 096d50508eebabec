// DebVisor console: the updates page's upload form. It sends the form with
// XMLHttpRequest so that a progress bar shows how much of the bundle has
// reached the console; the install's own progress then shows on the status
// page (htmx's SSE extension). Without this script the form posts as usual.
"use strict";

(function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) {
    return;
  }
  var status = document.getElementById("upload-status");
  var bar = document.getElementById("upload-progress");
  var text = document.getElementById("upload-progress-text");
  var error = document.getElementById("upload-error");
  var button = document.getElementById("install-upload");
  var file = document.getElementById("bundle");

  function human(bytes) {
    var units = ["B", "KiB", "MiB", "GiB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) {
      bytes /= 1024;
      i += 1;
    }
    return (i === 0 ? bytes : bytes.toFixed(1)) + " " + units[i];
  }

  function fail(message) {
    error.textContent = message;
    error.hidden = false;
    file.setAttribute("aria-invalid", "true");
    status.hidden = true;
    button.disabled = false;
  }

  // The reasons a re-rendered updates page (or an error page) gives.
  function reasons(doc) {
    if (!doc) {
      return "";
    }
    var found = [];
    doc.querySelectorAll("main .field-error:not([hidden]), #updates-problem, main .problem p:not(.code)")
      .forEach(function (el) {
        var t = el.textContent.trim();
        if (t && found.indexOf(t) < 0) {
          found.push(t);
        }
      });
    return found.join(" ");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!file.files || file.files.length === 0) {
      fail("Choose a bundle file (update.raucb) to upload.");
      return;
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.responseType = "document";
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) {
        return;
      }
      bar.max = e.total;
      bar.value = e.loaded;
      var pct = Math.floor((e.loaded * 100) / e.total);
      text.textContent = "Uploading: " + pct + " % (" + human(e.loaded) + " of " + human(e.total) + ")";
    });
    xhr.upload.addEventListener("load", function () {
      text.textContent = "Uploaded; the agent stores the bundle and starts the install…";
    });
    xhr.addEventListener("load", function () {
      var landed = xhr.responseURL ? new URL(xhr.responseURL).pathname : "";
      if (xhr.status === 200 && landed === "/updates/install") {
        window.location.assign(xhr.responseURL);
        return;
      }
      fail(reasons(xhr.response) || "The upload failed (HTTP " + xhr.status + "). Reload the page and try again.");
    });
    xhr.addEventListener("error", function () {
      fail("The upload broke off: the connection to the console was lost. Nothing was installed; try again.");
    });
    error.hidden = true;
    error.textContent = "";
    file.removeAttribute("aria-invalid");
    bar.removeAttribute("value");
    text.textContent = "Starting the upload…";
    status.hidden = false;
    button.disabled = true;
    xhr.send(new FormData(form));
  });
})();
