// DebVisor console: a VM's serial console. xterm.js draws the terminal;
// a WebSocket to the console carries keystrokes (binary frames) to the
// VM's serial port and the guest's output (binary frames) back. A text
// frame from the console says why it is about to close.
"use strict";

(function () {
  var box = document.getElementById("console");
  var status = document.getElementById("console-status");
  if (!box || !status) {
    return;
  }
  function show(text, state) {
    status.textContent = text;
    status.dataset.state = state;
  }
  if (typeof Terminal !== "function") {
    show("The terminal could not be loaded: reload the page.", "closed");
    return;
  }

  // xterm.js writes its measured cell size and colours into <style>
  // elements it creates; the page's Content-Security-Policy lets such
  // elements in only with this page's nonce, so stamp it on each.
  var nonce = box.dataset.styleNonce || "";
  var createElement = document.createElement;
  document.createElement = function (name, options) {
    var element = createElement.call(document, name, options);
    if (nonce && String(name).toLowerCase() === "style") {
      element.setAttribute("nonce", nonce);
    }
    return element;
  };

  var term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, \"DejaVu Sans Mono\", monospace",
    fontSize: 14,
    theme: { background: "#0f172a", foreground: "#e2e8f0", cursor: "#e2e8f0" }
  });
  term.open(box);
  term.focus();

  var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  var socket = new WebSocket(scheme + "//" + window.location.host + box.dataset.ws);
  socket.binaryType = "arraybuffer";
  var said = "";
  var encoder = new TextEncoder();
  show("Connecting…", "connecting");

  socket.addEventListener("open", function () {
    show("Connected: type into the terminal. Leaving this page closes the console.", "open");
  });
  socket.addEventListener("message", function (event) {
    if (typeof event.data === "string") {
      said = event.data;
      show(said, "closing");
    } else {
      term.write(new Uint8Array(event.data));
    }
  });
  socket.addEventListener("close", function (event) {
    var reason = said || event.reason || "the connection was refused or lost (code " + event.code + ")";
    show("Console closed: " + reason, "closed");
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
  });

  function send(bytes) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(bytes);
    }
  }
  // Typed text (UTF-8), and the raw bytes xterm.js reports for some mouse
  // and key sequences.
  term.onData(function (data) {
    send(encoder.encode(data));
  });
  term.onBinary(function (data) {
    var bytes = new Uint8Array(data.length);
    for (var i = 0; i < data.length; i++) {
      bytes[i] = data.charCodeAt(i) & 255;
    }
    send(bytes);
  });
})();
