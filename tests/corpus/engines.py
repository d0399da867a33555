"""A corpus of hostile engine folders: each case changes a copy of a real exported folder.

Every case maps to (change, words the one-line error must contain). The changes are what a
shared, downloaded or damaged folder can hold: paths leaving the folder, files loaded without
being listed, graphs whose inputs and outputs are not the manifest's, values that would exhaust
memory, and content of the wrong type.
"""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"


def edit(folder: Path, change: Callable[[dict], None]) -> None:
    """Apply `change` to the folder's manifest data and write it back."""
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    (folder / MANIFEST).write_text(json.dumps(data))


def entry(path: Path) -> dict:
    """A manifest file entry (bytes, sha256) describing `path` as it is now."""
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _parent(data: dict, keys: tuple):
    """The node holding keys[-1] in nested manifest data."""
    for key in keys[:-1]:
        data = data[key]
    return data


def setting(*keys_and_value) -> Callable[[Path], None]:
    """A change that sets data[k1][k2]... = value (the last argument)."""
    *keys, value = keys_and_value
    return lambda folder: edit(
        folder, lambda data: _parent(data, keys).__setitem__(keys[-1], value)
    )


def dropping(*keys) -> Callable[[Path], None]:
    """A change that deletes data[k1][k2]..."""
    return lambda folder: edit(folder, lambda data: _parent(data, keys).pop(keys[-1]))


def raw(text: str) -> Callable[[Path], None]:
    """A change that replaces manifest.json with `text`."""
    return lambda folder: (folder / MANIFEST).write_text(text)


def replace_graph(component: str, build: Callable, listed: bool = True) -> Callable[[Path], None]:
    """A change that swaps `component`'s graph for the ONNX model `build()` returns, listed in
    the manifest with its real hash (so only the graph's I/O can give it away)."""

    def change(folder: Path) -> None:
        import onnx

        path = folder / component / "model.onnx"
        onnx.save(build(), str(path))

        def apply(data):
            spec = data["components"][component]
            spec.pop("variants", None)
            spec["files"] = {f"{component}/model.onnx": entry(path)} if listed else {}

        edit(folder, apply)

    return change


def _graph(nodes, inputs, outputs):
    from onnx import helper

    graph = helper.make_graph(nodes, "hostile", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tensor(name, dtype, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, getattr(TensorProto, dtype), shape)


UNET_INPUTS = [
    ("sample", "FLOAT", ["batch", 4, "latent_height", "latent_width"]),
    ("timestep", "FLOAT", ["batch"]),
    ("encoder_hidden_states", "FLOAT", ["batch", "sequence", 32]),
]


def unet_graph(node_builder, out_name="out_sample", out_dtype="FLOAT", out_shape=None):
    """A stand-in UNet graph whose output comes from `node_builder(onnx.helper)`."""

    def build():
        from onnx import helper

        inputs = [_tensor(*spec) for spec in UNET_INPUTS]
        shape = out_shape or ["batch", 4, "latent_height", "latent_width"]
        return _graph(node_builder(helper, out_name), inputs, [_tensor(out_name, out_dtype, shape)])

    return build


def _mean_to_one_pixel(helper, out):
    return [helper.make_node("ReduceMean", ["sample"], [out], axes=[2, 3], keepdims=1)]


def _first_image_only(helper, out):
    def const(name, value):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, 7, [1], [value])
        )

    return [
        const("starts", 0),
        const("ends", 1),
        const("axis", 0),
        helper.make_node("Slice", ["sample", "starts", "ends", "axis"], [out]),
    ]


def _identity(helper, out):
    return [helper.make_node("Identity", ["sample"], [out])]


def _as_double(helper, out):
    return [helper.make_node("Cast", ["sample"], [out], to=11)]


def _four_channel_decoder():
    from onnx import helper

    inputs = [_tensor("latent_sample", "FLOAT", ["batch", 4, "latent_height", "latent_width"])]
    outputs = [_tensor("sample", "FLOAT", ["batch", 4, "latent_height", "latent_width"])]
    return _graph([helper.make_node("Identity", ["latent_sample"], ["sample"])], inputs, outputs)


def _symlink_outside(folder: Path) -> None:
    outside = folder.parent / "outside.onnx"
    outside.write_bytes((folder / "unet" / "model.onnx").read_bytes())
    link = folder / "unet" / "link.onnx"
    os.symlink(outside, link)

    def apply(data):
        data["components"]["unet"]["path"] = "unet/link.onnx"
        data["components"]["unet"].pop("variants", None)
        data["components"]["unet"]["files"]["unet/link.onnx"] = entry(outside)

    edit(folder, apply)


def _unlisted_copy(rel: str, where: tuple) -> Callable[[Path], None]:
    """Point `where` (keys into the manifest) at a copy of the file that is not listed."""

    def change(folder: Path) -> None:
        source = folder / rel
        copy = source.with_name("swapped-" + source.name)
        copy.write_bytes(source.read_bytes())
        setting(*where, str(copy.relative_to(folder)))(folder)

    return change


def _listed_tokenizer(text: str) -> Callable[[Path], None]:
    """Replace the tokenizer file with `text`, listed with its real hash."""

    def change(folder: Path) -> None:
        path = folder / "tokenizer" / "tokenizer.json"
        path.write_text(text)
        setting("tokenizer", "files", {"tokenizer/tokenizer.json": entry(path)})(folder)

    return change


def _tokenizer_with_ids_beyond(folder: Path) -> None:
    path = folder / "tokenizer" / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab[next(iter(vocab))] = 99_999  # one token's id beyond any embedding of this model
    _listed_tokenizer(json.dumps(data))(folder)


def _nested(depth: int) -> str:
    return '{"format": "fastimg-engine", "x": ' + "[" * depth + "]" * depth + "}"


def hostile_engines() -> dict[str, tuple[Callable[[Path], None], str]]:
    """name -> (change to an engine folder, words the error must contain)."""
    unet = ("components", "unet")
    sched = ("scheduler",)
    return {
        # 1. Paths that leave the folder.
        "absolute component path": (setting(*unet, "path", "/etc/shadow"), "must be relative"),
        "variant path with ..": (
            setting(*unet, "variants", "onnxruntime", "path", "../somewhere/evil.onnx"),
            "must not contain '..'",
        ),
        "files entry outside": (
            setting("files", {"/etc/shadow": {"bytes": 1, "sha256": "0" * 64}}),
            "must be relative",
        ),
        "symlink out of the folder": (_symlink_outside, "points outside the engine folder"),
        # 2. Loaded but never listed.
        "unlisted component path": (
            _unlisted_copy("unet/model.onnx", (*unet, "path")),
            "is not listed in the manifest's files",
        ),
        "unlisted variant path": (
            _unlisted_copy("unet/model.ort.onnx", (*unet, "variants", "onnxruntime", "path")),
            "is not listed in the manifest's files",
        ),
        "unlisted tokenizer path": (
            _unlisted_copy("tokenizer/tokenizer.json", ("tokenizer", "path")),
            "is not listed in the manifest's files",
        ),
        # 3. Graphs whose I/O is not the manifest's.
        "unet output of one pixel": (
            replace_graph("unet", unet_graph(_mean_to_one_pixel, out_shape=["batch", 4, 1, 1])),
            "returned out_sample of shape [2, 4, 1, 1], not [2, 4, 8, 11]",
        ),
        "unet returns one image under guidance": (
            replace_graph("unet", unet_graph(_first_image_only)),
            "returned out_sample of shape [1, 4, 8, 11], not [2, 4, 8, 11]",
        ),
        "unet output renamed": (
            replace_graph("unet", unet_graph(_identity, out_name="noise_pred")),
            "has outputs noise_pred, the manifest declares out_sample",
        ),
        "unet output in float64": (
            replace_graph("unet", unet_graph(_as_double, out_dtype="DOUBLE")),
            "out_sample as float64, not float32",
        ),
        "decoder with four channels": (
            replace_graph("vae_decoder", _four_channel_decoder),
            "returned sample of shape [1, 4, 8, 11], not [1, 3, 64, 88]",
        ),
        # 4. Values that would exhaust memory.
        "tokenizer max_length 10**9": (
            setting("tokenizer", "max_length", 10**9),
            "tokenizer.max_length is invalid",
        ),
        "num_train_timesteps 10**9": (
            setting(*sched, "num_train_timesteps", 10**9),
            "scheduler.num_train_timesteps is invalid",
        ),
        "max_side 10**12": (setting("shapes", {"max_side": 10**12}), "shapes.max_side"),
        # 5. Content of the wrong kind.
        "deeply nested json": (raw(_nested(100_000)), "nested too deeply"),
        "nested within limits": (raw(_nested(900)), "field format_version is missing"),
        "vae_scale_factor 0": (setting("vae_scale_factor", 0), "vae_scale_factor is invalid"),
        "vae_scale_factor NaN": (
            raw_manifest_value("vae_scale_factor", "NaN"),
            "vae_scale_factor is invalid",
        ),
        "vae_scale_factor string": (setting("vae_scale_factor", "8"), "vae_scale_factor"),
        "vae_scale_factor -8": (setting("vae_scale_factor", -8), "vae_scale_factor"),
        "vae_scale_factor 8.7": (setting("vae_scale_factor", 8.7), "vae_scale_factor"),
        "vae_scale_factor 6": (setting("vae_scale_factor", 6), "not a power of two"),
        "max_side Infinity": (
            raw_manifest_value("shapes", '{"max_side": Infinity}'),
            "shapes.max_side",
        ),
        "winograd extra_bytes -1": (
            setting(
                *unet, "variants", "onnxruntime", "winograd", {"convolutions": 1, "extra_bytes": -1}
            ),
            "winograd.extra_bytes",
        ),
        "shapes as a list": (setting("shapes", [2048]), "field shapes is invalid"),
        "component as a list": (setting(*unet, ["unet/model.onnx"]), "components.unet"),
        "files as a list": (setting(*unet, "files", ["unet/model.onnx"]), "components.unet.files"),
        "missing vae_scaling_factor": (
            dropping("vae_scaling_factor"),
            "field vae_scaling_factor is missing",
        ),
        "num_train_timesteps 0": (setting(*sched, "num_train_timesteps", 0), "num_train"),
        "num_train_timesteps 1": (setting(*sched, "num_train_timesteps", 1), "num_train"),
        "num_train_timesteps -5": (setting(*sched, "num_train_timesteps", -5), "num_train"),
        "num_train_timesteps string": (
            setting(*sched, "num_train_timesteps", "1000"),
            "num_train_timesteps is invalid",
        ),
        "beta_start -1": (setting(*sched, "beta_start", -1), "scheduler.beta_start"),
        "beta_end 4.0": (setting(*sched, "beta_end", 4.0), "scheduler.beta_end"),
        "one trained beta": (
            setting(*sched, "trained_betas", [0.5]),
            "trained_betas has 1 values for 1000",
        ),
        "steps_offset 10**6": (setting(*sched, "steps_offset", 10**6), "steps_offset"),
        "format_version true": (setting("format_version", True), "format_version"),
        "format_version -7": (setting("format_version", -7), "format_version"),
        "bytes as a string": (
            bytes_as_string,
            "bytes is invalid: Input should be a valid integer",
        ),
        "malformed tokenizer.json": (_listed_tokenizer("{not json"), "tokenizer file"),
        "truncated tokenizer.json": (
            lambda folder: _listed_tokenizer(
                (folder / "tokenizer" / "tokenizer.json").read_text()[:500]
            )(folder),
            "cannot be read",
        ),
        "pad id outside the vocabulary": (
            setting("tokenizer", "pad_id", 5_000_000),
            "is not in the tokenizer's vocabulary",
        ),
        "token ids beyond the embedding": (
            _tokenizer_with_ids_beyond,
            "the text encoder embeds only",
        ),
    }


def raw_manifest_value(key: str, literal: str) -> Callable[[Path], None]:
    """Set a top-level field to a JSON-ish literal (NaN, Infinity) json.dumps would not write."""

    def change(folder: Path) -> None:
        data = json.loads((folder / MANIFEST).read_text())
        data[key] = "__LITERAL__"
        text = json.dumps(data).replace('"__LITERAL__"', literal)
        (folder / MANIFEST).write_text(text)

    return change


def bytes_as_string(folder: Path) -> None:
    def apply(data):
        files = data["components"]["unet"]["files"]
        files["unet/model.onnx"]["bytes"] = str(files["unet/model.onnx"]["bytes"])

    edit(folder, apply)
