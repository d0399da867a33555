// The fastimg page: an image (file, drop or webcam frame), settings and optionally a mask
// (painted with a brush and an eraser over the input, or uploaded) in, the transformed image
// out through POST /v1/img2img; or, in stream mode, webcam frames over the WebSocket
// /v1/stream (the server keeps only the newest frame while it is busy).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_FRAME_SIDE = 512; // webcam frames are scaled down to this (a multiple of 8)
const FRAME_INTERVAL_MS = 66; // at most ~15 frames/s offered to the stream
let source = null; // the input image (a Blob)
let camera = null; // the webcam's MediaStream
let socket = null; // the stream's WebSocket
let history = [];
let controls = []; // per ControlNet of the engines, its control image (a Blob) or null
const DEFAULT_CONTROL_SCALE = "0.8"; // (the server's, for a ControlNet whose scale is empty)

// --- settings ---------------------------------------------------------------------------------

function settings() {
  const fields = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    strength: $("strength").value,
    steps: $("steps").value,
    guidance: $("guidance").value,
    seed: $("seed").value,
    sampler: $("sampler").value,
  };
  Object.assign(fields, controlSettings());
  const loras = [...$("lora-list").querySelectorAll("input")];
  if (loras.length) {
    // Each LoRA the server loaded at the scale set here (0: off), as the call's lora_scales.
    const chosen = loras.filter((input) => Number(input.value) !== 0);
    fields.lora_scales = chosen.map((input) => `${input.name}:${input.value}`).join(",") || "none";
  }
  // Empty fields are left to the server (a random seed, the default guidance and sampler).
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== ""));
}

function authorization() {
  const key = $("key").value;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadInfo() {
  const response = await fetch("/v1/info", { headers: authorization() });
  if (response.status === 401) {
    $("key-field").hidden = false;
    $("model").textContent = "this server needs its API key";
    return;
  }
  if (!response.ok) {
    $("model").textContent = (await detail(response)) + " (retrying)";
    setTimeout(loadInfo, 2000);
    return;
  }
  const info = await response.json();
  $("model").textContent = `${info.model} · ${info.backend} · ${info.precision}`;
  const sampler = $("sampler");
  sampler.length = 1;
  for (const name of info.samplers) sampler.add(new Option(name, name));
  showControl(info);
  showLoras(info.loras || {});
}

function showLoras(loras) {
  // A scale per LoRA the server loaded (serve --lora), set to its loaded scale.
  const list = $("lora-list");
  list.replaceChildren();
  for (const [name, scale] of Object.entries(loras)) {
    const input = Object.assign(document.createElement("input"), {
      type: "number", name, value: scale, min: -10, max: 10, step: 0.05, id: `lora-${name}`,
    });
    const label = document.createElement("label");
    label.append(`${name} `, input);
    list.append(label);
  }
  $("loras").hidden = !Object.keys(loras).length;
}

function showControl(info) {
  // One unit (image, preprocessor, scale) per ControlNet of the engines, in their order; the
  // first unit's elements have the plain ids (control-file...), the next ones -1, -2...
  const names = info.controlnets || [];
  $("control").hidden = !names.length;
  $("control").querySelector("legend").textContent = `ControlNet (${names.join(", ")})`;
  const units = $("control-units");
  units.replaceChildren();
  controls = names.map(() => null);
  names.forEach((name, k) => {
    const unit = $("control-unit").content.firstElementChild.cloneNode(true);
    for (const element of unit.querySelectorAll("[data-id]")) {
      element.id = element.dataset.id + (k ? `-${k}` : "");
    }
    unit.querySelector(".unit-name").textContent = names.length > 1 ? name : "";
    const preprocess = unit.querySelector("select");
    for (const p of info.control_preprocessors || []) preprocess.add(new Option(p, p));
    const file = unit.querySelector("input[type=file]");
    file.addEventListener("change", () => {
      if (file.files.length) useControl(k, file.files[0]);
    });
    unit.querySelector("button").addEventListener("click", () => useControl(k, null));
    units.append(unit);
  });
}

function unitOf(k) {
  return $("control-units").children[k];
}

function useControl(k, blob) {
  controls[k] = blob;
  const unit = unitOf(k);
  const preview = unit.querySelector("img");
  preview.hidden = !blob;
  if (blob) preview.src = URL.createObjectURL(blob);
  else unit.querySelector("input[type=file]").value = "";
}

function usedControls() {
  // How many ControlNets the call steers with: up to the last one with an image or a
  // preprocessor (the server's lists are positional, one value per ControlNet in order).
  if ($("control").hidden) return 0;
  let used = 0;
  controls.forEach((blob, k) => {
    if (blob || unitOf(k).querySelector("select").value) used = k + 1;
  });
  return used;
}

function controlSettings() {
  // The ControlNets' settings, one value each separated by ';' (the images go as files, see
  // controlImages). A ControlNet left empty before a used one runs at scale 0.
  const fields = {};
  const units = [...Array(usedControls()).keys()].map(unitOf);
  const preprocessors = units.map((unit) => unit.querySelector("select").value || "none");
  if (preprocessors.some((p) => p !== "none")) fields.control_preprocess = preprocessors.join(";");
  const scales = units.map((unit, k) => {
    const given = unit.querySelector("input[type=number]").value;
    return controls[k] || preprocessors[k] !== "none" ? given : "0";
  });
  if (scales.some((scale) => scale !== "")) {
    fields.control_scale = scales.map((scale) => scale || DEFAULT_CONTROL_SCALE).join(";");
  }
  return fields;
}

function controlImages() {
  // The control images to send, in ControlNet order up to the last one given; a ControlNet
  // without its own takes the input image (made by its preprocessor, if any).
  const last = controls.reduce((found, blob, k) => (blob ? k : found), -1);
  return controls.slice(0, last + 1).map((blob) => blob || source);
}

async function detail(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

// --- the input ----------------------------------------------------------------------------------

function useImage(blob) {
  source = blob;
  $("input").src = URL.createObjectURL(blob);
  $("input").hidden = false;
  $("transform").disabled = false;
  $("input").addEventListener("load", resetMask, { once: true });
}

// --- the mask: white (shown half-transparent over the input) repaints, the rest is kept --------

let masked = false; // whether anything is painted or uploaded
let tool = null; // "brush", "eraser" or null (not painting)

function resetMask() {
  // A clear mask the input's own size, over it.
  const canvas = $("mask");
  canvas.width = $("input").naturalWidth;
  canvas.height = $("input").naturalHeight;
  canvas.hidden = false;
  masked = false;
}

function useTool(name) {
  tool = tool === name ? null : name;
  for (const other of ["brush", "eraser"]) {
    $(other).setAttribute("aria-pressed", String(tool === other));
  }
  $("mask").classList.toggle("painting", !!tool);
}

function paint(event) {
  // One dab of the brush (white) or the eraser (clear) under the pointer.
  if (!tool || !(event.buttons & 1)) return;
  const canvas = $("mask");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) * canvas.width) / box.width;
  const y = ((event.clientY - box.top) * canvas.height) / box.height;
  const radius = (Number($("brush-size").value) * canvas.width) / box.width / 2;
  const context = canvas.getContext("2d");
  context.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
  context.fillStyle = "#fff";
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fill();
  masked = masked || tool === "brush";
  event.preventDefault();
}

function maskBlob() {
  // The mask as the server takes it: white where painted, black elsewhere, a PNG.
  const painted = $("mask");
  const canvas = document.createElement("canvas");
  canvas.width = painted.width;
  canvas.height = painted.height;
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(painted, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

$("brush").addEventListener("click", () => useTool("brush"));
$("eraser").addEventListener("click", () => useTool("eraser"));
$("clear-mask").addEventListener("click", resetMask);
$("mask").addEventListener("pointerdown", paint);
$("mask").addEventListener("pointermove", paint);
$("mask-file").addEventListener("change", () => {
  // An uploaded mask (white repaints), stretched over the input.
  const file = $("mask-file").files[0];
  if (!file || $("mask").hidden) return;
  const picture = new Image();
  picture.addEventListener("load", () => {
    const canvas = $("mask");
    const context = canvas.getContext("2d");
    context.globalCompositeOperation = "source-over";
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(picture, 0, 0, canvas.width, canvas.height);
    masked = true;
  });
  picture.src = URL.createObjectURL(file);
});

$("file").addEventListener("change", () => {
  if ($("file").files.length) useImage($("file").files[0]);
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) useImage(file);
});

async function toggleWebcam() {
  if (camera) {
    stopStream();
    camera.getTracks().forEach((track) => track.stop());
    camera = null;
  } else {
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (error) {
      showError(`the webcam cannot be used: ${error.message}`);
      return;
    }
    $("video").srcObject = camera;
  }
  $("video").hidden = !camera;
  $("input").hidden = !!camera;
  $("mask").hidden = !!camera || !source; // (painted over the input, not the live picture)
  $("snap").hidden = $("stream").hidden = !camera;
  $("webcam").textContent = camera ? "Stop webcam" : "Webcam";
}

function frame(type = "image/jpeg") {
  // The webcam's current picture, scaled down, as a Blob.
  const video = $("video");
  if (!video.videoWidth) return Promise.resolve(null); // (not playing yet)
  const scale = Math.min(1, MAX_FRAME_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const canvas = $("canvas");
  canvas.width = Math.round((video.videoWidth * scale) / 8) * 8;
  canvas.height = Math.round((video.videoHeight * scale) / 8) * 8;
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, type, 0.85));
}

if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  $("webcam").hidden = false;
  $("webcam").addEventListener("click", toggleWebcam);
  $("snap").addEventListener("click", async () => {
    const blob = await frame("image/png");
    if (!blob) return;
    await toggleWebcam(); // show the frame taken, not the live picture
    useImage(blob);
  });
  $("stream").addEventListener("click", () => (socket ? stopStream() : startStream()));
}

// --- one transform ------------------------------------------------------------------------------

async function transform() {
  const form = new FormData();
  form.append("image", source, source.name || "image.png");
  for (const control of $("control").hidden ? [] : controlImages()) {
    form.append("control_image", control, control.name || "control.png");
  }
  for (const [name, value] of Object.entries(settings())) form.append(name, value);
  if (masked && !$("mask").hidden) {
    form.append("mask", await maskBlob(), "mask.png");
    if ($("keep-unmasked").checked) form.append("keep_unmasked", "true");
    if ($("only-masked").checked) form.append("mask_padding", "32");
    if ($("masked-content").value) form.append("masked_content", $("masked-content").value);
  }
  showError("");
  $("transform").disabled = true;
  $("timing").textContent = "transforming…";
  const started = performance.now();
  try {
    const response = await fetch("/v1/img2img", {
      method: "POST",
      body: form,
      headers: authorization(),
    });
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      showError((await detail(response)) + (retry ? ` (retry in ${retry} s)` : ""));
      $("timing").textContent = "";
      return;
    }
    const image = URL.createObjectURL(await response.blob());
    const ms = Math.round(performance.now() - started);
    const entry = {
      image,
      timing: `${ms} ms`,
      settings: describe(response.headers.get("X-Fastimg-Settings")),
    };
    addToHistory(entry);
  } catch (error) {
    showError(`the server cannot be reached: ${error.message}`);
    $("timing").textContent = "";
  } finally {
    $("transform").disabled = false;
  }
}

function describe(header) {
  // The server's settings (X-Fastimg-Settings), short.
  if (!header) return "";
  const s = JSON.parse(header);
  const v = (key) => s[`fastimg:${key}`];
  const control = v("control_scale") === undefined ? ""
    : ` · control ${v("control_preprocess")} ${v("control_scale")}`;
  return `seed ${v("seed")} · strength ${v("strength")} · steps ${v("steps")} · ` +
    `guidance ${v("guidance")} · ${v("scheduler")}${control}` + (v("mask") ? ` · mask ${v("mask")}` : "");
}

function show(entry) {
  $("result").src = entry.image;
  $("timing").textContent = entry.timing;
  $("settings").textContent = entry.settings;
  for (const thumb of $("history").children) {
    thumb.classList.toggle("shown", thumb.src === entry.image);
  }
}

function addToHistory(entry) {
  history.push(entry);
  const thumb = new Image();
  thumb.src = entry.image;
  thumb.title = `${entry.timing} · ${entry.settings}`;
  thumb.addEventListener("click", () => show(entry));
  $("history").prepend(thumb);
  show(entry);
}

$("transform").addEventListener("click", transform);
$("strength").addEventListener("input", () => {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
});
$("random").addEventListener("click", () => {
  $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0];
  $("seed").dispatchEvent(new Event("input")); // (a running stream takes it)
});
$("key").addEventListener("change", loadInfo);

// --- stream mode --------------------------------------------------------------------------------

function keyProtocol(key) {
  // The API key as a WebSocket subprotocol (a browser cannot send an Authorization header).
  const bytes = new TextEncoder().encode(key);
  const base64 = btoa(String.fromCharCode(...bytes));
  return "fastimg.key." + base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function startStream() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`;
  const key = $("key").value;
  socket = new WebSocket(url, key ? ["fastimg", keyProtocol(key)] : ["fastimg"]);
  socket.binaryType = "blob";
  const stats = { results: [], meta: null, shown: null, timer: null, sending: false };
  socket.addEventListener("open", async () => {
    const fields = await streamSettings();
    if (!fields) return socket.close(1000);
    stats.masked = "mask" in fields;
    liveSent = { ...fields };
    socket.send(JSON.stringify(fields));
  });
  socket.addEventListener("message", (event) => {
    if (event.data instanceof Blob) return showFrame(event.data, stats);
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      showError("");
      stats.timer = setInterval(() => offerFrame(stats), FRAME_INTERVAL_MS);
      const mask = stats.masked ? " · mask given" : "";
      $("settings").textContent = `stream · seed ${message.settings.seed}${mask}`;
    } else if (message.type === "updated") {
      const mask = stats.masked ? " · mask given" : "";
      $("settings").textContent = `stream · seed ${message.settings.seed}${mask} · changed`;
    } else if (message.type === "result") {
      stats.meta = message;
    } else if (message.type === "error") {
      showError(message.detail);
    }
  });
  socket.addEventListener("close", (event) => {
    clearInterval(stats.timer);
    if (event.code !== 1000 && event.code !== 1005) {
      showError(`the stream closed (${event.code}) ${event.reason}`);
    }
    socket = null;
    liveSent = null;
    $("stream").textContent = "Stream";
  });
  $("stream").textContent = "Stop stream";
}

// While a stream runs, these fields change it from the next frame (no restart, no warm-up):
// the changed ones go as a JSON message, a moment after the last keystroke.
const LIVE_FIELDS = { prompt: "prompt", negative: "negative_prompt", strength: "strength",
  guidance: "guidance", seed: "seed" };
const LIVE_DELAY_MS = 300;
let liveSent = null; // the stream's settings as last sent
let liveTimer = null;

function sendChanges() {
  if (!socket || socket.readyState !== WebSocket.OPEN || !liveSent) return;
  const changes = {};
  for (const [id, name] of Object.entries(LIVE_FIELDS)) {
    const value = $(id).value;
    if (value !== (liveSent[name] ?? "") && !(name === "seed" && value === "")) {
      changes[name] = value;
    }
  }
  if (!Object.keys(changes).length) return;
  Object.assign(liveSent, changes);
  socket.send(JSON.stringify(changes));
}

for (const id of Object.keys(LIVE_FIELDS)) {
  $(id).addEventListener("input", () => {
    clearTimeout(liveTimer);
    liveTimer = setTimeout(sendChanges, LIVE_DELAY_MS);
  });
}

async function streamSettings() {
  // The stream's settings: the form's, the ControlNets' control images, and the mask painted
  // (over the last picture) with its options, as a single transform sends them; the pictures
  // base64, sent once. The server stretches the mask over every frame, as over an image of
  // another size. Null (an error shown) where the controls cannot go as a stream's.
  const fields = settings();
  const given = $("control").hidden ? [] : controlImages();
  const gap = given.findIndex((blob, k) => !controls[k]);
  if (gap >= 0) {
    // (a ControlNet without its own image would take the still input, not each frame)
    showError(`stream mode: ControlNet ${gap + 1} has no control image but a later one has: ` +
      "give it one, or clear the later ones (a ControlNet without one takes each frame)");
    return null;
  }
  if (given.length) fields.control_image = await Promise.all(given.map(base64Of));
  if (masked) {
    fields.mask = await base64Of(await maskBlob());
    if ($("keep-unmasked").checked) fields.keep_unmasked = "true";
    if ($("only-masked").checked) fields.mask_padding = "32";
    if ($("masked-content").value) fields.masked_content = $("masked-content").value;
  }
  return fields;
}

function base64Of(blob) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",")[1]);
    reader.readAsDataURL(blob);
  });
}

async function offerFrame(stats) {
  // Offer the newest picture unless the last one is still on its way.
  if (!socket || socket.readyState !== WebSocket.OPEN || stats.sending || socket.bufferedAmount) {
    return;
  }
  stats.sending = true;
  try {
    const blob = await frame();
    if (blob && socket && socket.readyState === WebSocket.OPEN) socket.send(blob);
  } finally {
    stats.sending = false;
  }
}

function showFrame(blob, stats) {
  const now = performance.now();
  stats.results = stats.results.filter((t) => now - t < 2000).concat([now]);
  const fps = stats.results.length > 1
    ? (stats.results.length - 1) / ((now - stats.results[0]) / 1000) : 0;
  const meta = stats.meta || { ms: 0, dropped: 0 };
  if (stats.shown) URL.revokeObjectURL(stats.shown); // (history keeps its own images)
  stats.shown = $("result").src = URL.createObjectURL(blob);
  $("timing").textContent =
    `${fps.toFixed(1)} frames/s · ${meta.ms} ms per frame · ${meta.dropped} frames dropped`;
}

function stopStream() {
  if (socket) socket.close(1000);
}

loadInfo();
