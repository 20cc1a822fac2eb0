// The inspection page: sends each image to POST /predict?overlay=1 and shows the answer as is.
// It computes nothing: verdicts, scores, thresholds and the overlay all come from the API.
"use strict";
(function () {
  var drop = document.getElementById("drop");
  var input = document.getElementById("files");
  var results = document.getElementById("results");
  var status = document.getElementById("status");
  var CONCURRENCY = 4;        // requests in flight (the server batches them)
  var queue = [], inFlight = 0, done = 0, total = 0, count = 0;

  function fmt(x) {
    if (x === null || x === undefined) return "n/a";
    var a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? x.toExponential(3) : x.toPrecision(4);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  fetch("/info").then(function (r) { return r.json(); }).then(function (info) {
    var t = info.thresholds || {};
    var crop = info.input && info.input.crop_size ? ", centre crop " + info.input.crop_size.join("×") : "";
    var changed = info.bank_changed ? " (last change " + info.bank_changed + ")" : "";
    var adding = info.adding && info.adding.enabled ? " · adding good images: on (POST /normal)" : "";
    document.getElementById("model").textContent =
      info.backbone + " · bank of " + info.bank_size + " images" + changed + " · input " + info.input.image_size.join("×") +
      crop + " · image threshold " + fmt(t.image) + " · pixel threshold " + fmt(t.pixel) + adding;
  }).catch(function () {
    document.getElementById("model").textContent = "GET /info failed: is the server running?";
  });

  // Each card's title: a running number and the file's name (its path inside a chosen folder when the
  // browser gives one), so that two uploads of 000.png from different folders stay apart.
  function card(file) {
    var node = el("article", "result");
    count++;
    node.dataset.filename = file.name;
    node.dataset.index = String(count);
    node.dataset.title = "#" + count + " · " + (file.webkitRelativePath || file.name);
    node.dataset.state = "pending";
    var title = el("h2");
    title.appendChild(el("span", "name", node.dataset.title));
    title.appendChild(el("span", "verdict", "…"));
    node.appendChild(title);
    node.appendChild(el("p", "pending", "scoring…"));
    results.appendChild(node);
    return node;
  }

  function showResult(node, r) {
    node.textContent = "";
    node.dataset.state = "done";
    node.dataset.verdict = r.verdict;
    node.dataset.score = String(r.score);
    node.dataset.threshold = String(r.thresholds.image);
    node.dataset.normalized = String(r.normalized_score);
    var title = el("h2");
    title.appendChild(el("span", "name", node.dataset.title));
    title.appendChild(el("span", "verdict", r.verdict));
    node.appendChild(title);
    var t = r.thresholds.image;
    var ratio = (t ? " (" + (r.score / t).toFixed(2) + "× the threshold)" : "");
    node.appendChild(el("p", "score", "score " + fmt(r.score) + " · threshold " + fmt(t) + ratio));
    if (r.normalized_score !== null) {
      var bar = el("div", "bar");
      bar.title = "normalised score " + r.normalized_score.toFixed(3) + " (threshold at the mark, 0.5)";
      var fill = el("div", "fill");
      fill.style.width = (100 * Math.min(1, Math.max(0, r.normalized_score))).toFixed(1) + "%";
      bar.appendChild(fill);
      bar.appendChild(el("div", "mark"));
      node.appendChild(bar);
    }
    if (r.overlay_png) {
      var img = el("img");
      img.alt = "overlay of " + node.dataset.title;
      img.width = r.image_size.width; img.height = r.image_size.height;
      img.src = "data:image/png;base64," + r.overlay_png;
      node.appendChild(img);
    }
    var n = r.boxes.length;
    node.appendChild(el("p", "details", r.image_size.width + "×" + r.image_size.height + " px · " + n +
      " anomalous region" + (n === 1 ? "" : "s") + (n ? " (largest " + r.boxes[0].width + "×" + r.boxes[0].height +
      " at " + r.boxes[0].x + "," + r.boxes[0].y + ")" : "") + " · normalised " + fmt(r.normalized_score)));
  }

  function showError(node, code, detail) {
    node.textContent = "";
    node.dataset.state = "done";
    node.dataset.verdict = "error";
    var title = el("h2");
    title.appendChild(el("span", "name", node.dataset.title));
    title.appendChild(el("span", "verdict", "refused"));
    node.appendChild(title);
    node.appendChild(el("p", "error", detail + (code ? " [" + code + "]" : "")));
  }

  function progress() {
    status.textContent = total ? (done + " of " + total + " scored" + (inFlight ? " · " + inFlight + " in flight" : "")) : "";
  }

  function pump() {
    while (inFlight < CONCURRENCY && queue.length) {
      send(queue.shift());
    }
    progress();
  }

  function send(job) {
    inFlight++;
    var form = new FormData();
    form.append("file", job.file, job.file.name);
    fetch("/predict?overlay=1", { method: "POST", body: form }).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
        if (response.ok && body) showResult(job.node, body);
        else showError(job.node, body && body.error, (body && body.detail) || ("HTTP " + response.status + " " + text.slice(0, 200)));
      });
    }).catch(function (err) {
      showError(job.node, "network", String(err));
    }).then(function () {
      inFlight--; done++;
      pump();
    });
  }

  function add(files) {
    for (var i = 0; i < files.length; i++) {
      queue.push({ file: files[i], node: card(files[i]) });
      total++;
    }
    pump();
  }

  input.addEventListener("change", function () { add(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) { if (e.dataTransfer && e.dataTransfer.files) add(e.dataTransfer.files); });
  drop.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  // a file dropped outside the zone must not navigate away from the page
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });
})();
