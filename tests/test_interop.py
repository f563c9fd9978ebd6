"""`bigtrain import` / `bigtrain export` (bigtrain/interop): round trips, the references' names, and
files that must be refused without anything being run or written."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from bigtrain.config import from_dict, to_dict
from bigtrain.interop import WeightsError, export_checkpoint, import_weights
from bigtrain.models import build_models
from bigtrain.train.checkpoint import begin_checkpoint, load_checkpoint, save_checkpoint
from conftest import BIGTRAIN, REPO, cli_env

SMALL = {
    "biggan-shared-hier": ["model.name=biggan", "model.resolution=64", "model.biggan.ch=2", "model.biggan.d_ch=4", "model.z_dim=20",
                           "model.biggan.attn_res=[16]"],
    "biggan-cifar": ["model.name=biggan", "model.biggan.ch=4", "model.biggan.d_ch=4", "model.z_dim=16", "model.biggan.shared_dim=0",
                     "model.biggan.hier=false", "model.biggan.init=N02"],
    "stylegan2-resnet": ["model.name=stylegan2", "model.stylegan2.fmap_base=256", "model.stylegan2.fmap_max=16", "model.z_dim=16",
                         "model.stylegan2.w_dim=16", "model.stylegan2.mapping_layers=2"],
    "stylegan2-skip": ["model.name=stylegan2", "model.stylegan2.fmap_base=256", "model.stylegan2.fmap_max=16", "model.z_dim=16",
                       "model.stylegan2.w_dim=16", "model.stylegan2.mapping_layers=2", "model.stylegan2.d_architecture=skip", "model.stylegan2.conv_clamp=0"],
}  # fmt: skip


def bigtrain_checkpoint(run: Path, overrides: list[str], num_classes: int) -> dict:
    """A checkpoint as training writes it, with G, G_ema and D all different and SN vectors advanced."""
    cfg = from_dict({}, [*overrides, f"model.num_classes={num_classes}"])
    torch.manual_seed(0)
    G, D = build_models(cfg.model, num_classes)
    G_ema, _ = build_models(cfg.model, num_classes)
    with torch.no_grad():
        for _ in range(2):  # BN statistics and power iterations move
            G(torch.randn(4, cfg.model.z_dim), torch.randint(0, num_classes, (4,)))
            D(
                torch.randn(4, 3, cfg.model.resolution, cfg.model.resolution),
                torch.randint(0, num_classes, (4,)),
            )
        for p in G_ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {"G": G.state_dict(), "G_ema": G_ema.state_dict(), "D": D.state_dict(), "num_classes": num_classes,
             "images": 4000, "iteration": 12, "config": to_dict(cfg)}  # fmt: skip
    begin_checkpoint(run, "step-00000012")
    save_checkpoint(run, "step-00000012", state, to_dict(cfg))
    return state


@pytest.mark.parametrize("case", sorted(SMALL))
@pytest.mark.parametrize("num_classes", [10, 1])
def test_export_then_import_gives_bit_identical_tensors(tmp_path, case, num_classes):
    state = bigtrain_checkpoint(tmp_path / "run", SMALL[case], num_classes)
    to = "biggan-pytorch" if case.startswith("biggan") else "stylegan2-ada"
    export_checkpoint(str(tmp_path / "run"), to, tmp_path / "export")
    import_weights(str(tmp_path / "export"), tmp_path / "imported")
    back = load_checkpoint(tmp_path / "imported")
    assert back["num_classes"] == num_classes and back["iteration"] == 12
    for net in ("G", "G_ema", "D"):
        assert back[net].keys() == state[net].keys(), set(back[net]) ^ set(state[net])
        differ = [k for k in state[net] if not torch.equal(back[net][k], state[net][k])]
        assert not differ, f"{net}: {differ[:4]} differ after export and import"


def test_exports_carry_exactly_the_references_tensor_names_and_shapes(tmp_path):
    """The names and shapes recorded from the references' own networks (tests/data/*_state_dict_keys.json):
    their load_state_dict(strict=True) needs exactly these."""
    import json

    from bigtrain.interop.biggan_pytorch import to_biggan_pytorch
    from bigtrain.interop.stylegan2_ada import to_stylegan2_ada
    from bigtrain.models import biggan, stylegan2

    rec = json.loads((REPO / "tests/data/stylegan2_ada_state_dict_keys.json").read_text())
    c = rec["config"]
    G = stylegan2.Generator(
        32, c["z_dim"], c["w_dim"], c["c_dim"], c["channel_base"], c["channel_max"], c["mapping_layers"]
    )
    nets = [(G, rec["G"], to_stylegan2_ada)]
    for arch in ("resnet", "orig", "skip"):
        D = stylegan2.Discriminator(32, c["c_dim"], c["channel_base"], c["channel_max"], architecture=arch)
        nets.append((D, rec[f"D_{arch}"], to_stylegan2_ada))
    for r in json.loads((REPO / "tests/data/biggan_pytorch_state_dict_keys.json").read_text())[
        "configs"
    ].values():
        kw = r["kwargs"]
        attn = tuple(int(a) for a in kw["G_attn"].split("_") if a != "0")
        shared = kw["shared_dim"] if kw["G_shared"] else 0
        G = biggan.Generator(
            kw["resolution"], kw["G_ch"], kw["dim_z"], shared, kw["hier"], attn, kw["n_classes"]
        )
        D = biggan.Discriminator(kw["resolution"], kw["D_ch"], attn, kw["n_classes"])
        nets += [(G, r["G"], to_biggan_pytorch), (D, r["D"], to_biggan_pytorch)]
    for net, names, export in nets:
        args = (net.state_dict(), 32) if export is to_stylegan2_ada else (net.state_dict(),)
        got = {k: list(v.shape) for k, v in export(*args)[0].items()}
        assert got == names, (type(net).__name__, sorted(set(got) ^ set(names))[:6])


# --------------------------------------------------------------------------- files that are refused


class _Payload:
    """Pickles as a call to os.system: what a hostile "checkpoint" does to a plain pickle.load."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _fake_persistence_module():
    """A stand-in `torch_utils.persistence` so a test can write the NVlabs format with its own classes."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only pickled here, never called: bigtrain's reader has its own
        raise AssertionError("not used")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    return module


class _Persistent:
    """Pickles the way NVlabs' persistence does: the module source, the class name and the state."""

    def __init__(self, source: str, class_name: str, state: dict):
        self.meta = {
            "type": "class",
            "version": 6,
            "module_src": source,
            "class_name": class_name,
            "state": state,
        }

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


@pytest.fixture
def nvlabs_format(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", _fake_persistence_module())


def _as_persistent(net: torch.nn.Module, source: str, class_name: str, kwargs: dict) -> _Persistent:
    """A bigtrain network's tensors under the reference's names, as one flat persistent object."""
    from bigtrain.interop.stylegan2_ada import to_stylegan2_ada

    tensors = to_stylegan2_ada(net.state_dict(), 32)[0]
    return _Persistent(source, class_name, {"_parameters": tensors, "_modules": {}, "_init_kwargs": kwargs})


def test_a_pickle_that_runs_a_command_is_refused_and_the_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "network-snapshot-000001.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Payload(f"touch {marker}")}))
    out = tmp_path / "out"
    with pytest.raises(WeightsError, match=r"names posix\.system, which bigtrain refuses to load") as e:
        import_weights(str(evil), out)
    assert "\n" not in str(e.value)
    assert not marker.exists(), "the pickle's command ran"
    assert not out.exists() and not list(tmp_path.glob(".out*")), "something was written"
    # The same through the command line: one sentence, exit 2, no traceback.
    result = subprocess.run(
        [BIGTRAIN, "import", str(evil), str(out)], capture_output=True, text=True, env=cli_env()
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "names posix.system" in result.stderr and not marker.exists()
    for name in ("builtins.eval", "builtins.exec", "subprocess.Popen"):
        module, attr = name.rsplit(".", 1)
        data = f"c{module}\n{attr}\n(S'1'\ntR.".encode()  # protocol 0: GLOBAL, MARK, STRING, TUPLE, REDUCE
        evil.write_bytes(data)
        with pytest.raises(WeightsError, match=rf"names {name},"):
            import_weights(str(evil), out)


def test_embedded_source_is_never_executed(tmp_path, nvlabs_format):
    """NVlabs' loader execs each network's module source; a file whose source writes a file loads here
    (its tensors are plain data) and the file never appears. The source's sha256 is recorded."""
    import hashlib

    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('source executed')\nclass Generator: pass\n"
    cfg = from_dict({}, [*SMALL["stylegan2-resnet"], "model.num_classes=1"])
    G, D = build_models(cfg.model, 1)
    g_kwargs = {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 32, "img_channels": 3,
                "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 256, "channel_max": 16,
                "conv_clamp": 256}}  # fmt: skip
    d_kwargs = {"c_dim": 0, "img_resolution": 32, "img_channels": 3, "channel_base": 256, "channel_max": 16,
                "conv_clamp": 256}  # fmt: skip
    top = {
        "G_ema": _as_persistent(G, source, "Generator", g_kwargs),
        "D": _as_persistent(D, source, "Discriminator", d_kwargs),
    }
    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps(top, protocol=4))
    out = import_weights(str(path), tmp_path / "out")
    assert not marker.exists(), "the embedded source ran"
    state = load_checkpoint(out)
    assert hashlib.sha256(source.encode()).hexdigest() in state["imported"]["module_sources_sha256"]
    for k, v in G.state_dict().items():
        assert torch.equal(state["G_ema"][k], v), k


def test_truncated_pickle_and_folder_without_G_are_one_sentence_each(tmp_path, nvlabs_format):
    cfg = from_dict({}, [*SMALL["stylegan2-resnet"], "model.num_classes=1"])
    G, _ = build_models(cfg.model, 1)
    kwargs = {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 32, "mapping_kwargs": {"num_layers": 2},
              "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "conv_clamp": 256}}  # fmt: skip
    data = pickle.dumps(
        {"G_ema": _as_persistent(G, "class Generator: pass", "Generator", kwargs)}, protocol=4
    )
    whole = tmp_path / "whole.pkl"
    whole.write_bytes(data)
    import_weights(str(whole), tmp_path / "ok")  # the whole file imports
    truncated = tmp_path / "network-snapshot-000010.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"is not a readable network pickle \(truncated or damaged") as e:
        import_weights(str(truncated), tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()

    folder = tmp_path / "biggan_weights"
    folder.mkdir()
    torch.save({"itr": 5, "config": {}}, folder / "state_dict.pth")
    torch.save({}, folder / "D.pth")
    with pytest.raises(
        WeightsError, match=r"has neither G\.pth nor G_ema\.pth: not a BigGAN-PyTorch weights folder"
    ):
        import_weights(str(folder), tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="holds none of G.pth"):
        import_weights(str(empty), tmp_path / "out")
    with pytest.raises(WeightsError, match="does not exist"):
        import_weights(str(tmp_path / "missing.pkl"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_or_extra_tensor_or_another_shape_is_one_sentence_naming_it(tmp_path):
    bigtrain_checkpoint(tmp_path / "run", SMALL["biggan-cifar"], 10)
    export_checkpoint(str(tmp_path / "run"), "biggan-pytorch", tmp_path / "export")
    G = torch.load(tmp_path / "export/G_ema.pth", weights_only=True)
    broken = {k: v for k, v in G.items() if k != "linear.bias"}
    torch.save(broken, tmp_path / "export/G_ema.pth")
    with pytest.raises(WeightsError, match=r"has no tensor for linear\.bias, which the network needs"):
        import_weights(str(tmp_path / "export"), tmp_path / "out")
    torch.save({**G, "linear.extra": torch.zeros(1)}, tmp_path / "export/G_ema.pth")
    with pytest.raises(
        WeightsError, match=r"has a tensor linear\.extra that the network built from it does not have"
    ):
        import_weights(str(tmp_path / "export"), tmp_path / "out")
    torch.save({**G, "linear.bias": torch.zeros(7)}, tmp_path / "export/G_ema.pth")
    with pytest.raises(
        WeightsError, match=r"tensor linear\.bias has shape \[7\], the network built from it needs \[\d+\]"
    ):
        import_weights(str(tmp_path / "export"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bare_state_dict_needs_a_recipe_and_imports_with_one(tmp_path):
    state = bigtrain_checkpoint(tmp_path / "run", SMALL["biggan-cifar"], 10)
    export_checkpoint(str(tmp_path / "run"), "biggan-pytorch", tmp_path / "export")
    with pytest.raises(WeightsError, match="does not say its architecture: pass --recipe"):
        import_weights(str(tmp_path / "export/G_ema.pth"), tmp_path / "out")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: {name: biggan, ch: 4, d_ch: 4, z_dim: 16, shared_dim: 0, hier: false, num_classes: 10}\n"
    )
    out = import_weights(str(tmp_path / "export/G_ema.pth"), tmp_path / "out", str(recipe))
    back = load_checkpoint(out)
    assert "D" not in back
    for k, v in state["G_ema"].items():
        if "._v" not in k and "num_batches_tracked" not in k:  # not in the reference's file: rebuilt
            assert torch.equal(back["G_ema"][k], v), k


def test_import_and_export_on_the_command_line(tmp_path):
    bigtrain_checkpoint(tmp_path / "run", SMALL["stylegan2-resnet"], 10)
    env = cli_env()
    result = subprocess.run([BIGTRAIN, "export", str(tmp_path / "run"), "--to", "stylegan2-ada", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "D.pth",
        "G.pth",
        "G_ema.pth",
        "stylegan2_ada_kwargs.json",
    ]
    result = subprocess.run([BIGTRAIN, "import", str(tmp_path / "x"), str(tmp_path / "imp")], capture_output=True,
                            text=True, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"model\.num_classes +- 10", result.stdout.replace("=", "-")), result.stdout
    recipe = (tmp_path / "imp/recipe.yaml").read_text()
    assert recipe.startswith("# Imported by `bigtrain import`") and "<- D.init_kwargs.architecture" in recipe
    result = subprocess.run([BIGTRAIN, "sample", str(tmp_path / "imp"), "--n", "4", "--classes", "3"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert result.returncode == 0 and (tmp_path / "imp/samples/imported-trunc0.png").is_file(), result.stderr
    result = subprocess.run([BIGTRAIN, "export", str(tmp_path / "imp"), "--to", "biggan-pytorch", str(tmp_path / "y")],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert (
        result.returncode == 2
        and "holds a stylegan2 model; --to biggan-pytorch exports biggan only" in result.stderr
    )


def test_reader_allows_only_the_formats_names():
    """The list a reviewer must check: nothing in it runs code or touches files."""
    from bigtrain.interop.nvlabs_pickle import ALLOWED_GLOBALS

    assert sorted(f"{m}.{n}" for m, n in ALLOWED_GLOBALS) == [
        "builtins.frozenset", "builtins.set", "collections.OrderedDict", "dnnlib.util.EasyDict",
        "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_tensor_v2", "torch.storage._load_from_bytes",
        "torch_utils.persistence._reconstruct_persistent_obj",
    ]  # fmt: skip


# --------------------------------------------------------------------------- the references' own files

REFS = REPO / "tests/data/reference_formats"  # written by the references' code: see its README.md
STYLEGAN2_FILES = {
    "sg2ada-uncond32": "network-snapshot-000040.pkl",
    "sg2ada-cond32": "network-snapshot-000012.pkl",
    "sg2ada-published-style": "sg2ada-published-style.pkl",
    "sg3-stylegan2-G": "sg3-stylegan2-G.pkl",
}
# The networks' outputs are computed in float32 by both codes along different (equal) formulas:
# measured relative errors 2e-7 to 1.1e-6 of the largest value.
RTOL = 1e-5


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _imported_networks(out: Path):
    from bigtrain.eval.generate import load_generator

    state = load_checkpoint(out)
    cfg = from_dict(state["config"])
    G, D = build_models(cfg.model, state["num_classes"])
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    return state, load_generator(str(out)).G, G.eval(), D.eval()


@pytest.mark.parametrize("case", sorted(STYLEGAN2_FILES))
def test_imported_stylegan2_equals_the_references_outputs(tmp_path, case):
    """G_ema at psi 1 and 0.7 with const noise, G, and D's logits, for the same z, class and images."""
    ref = torch.load(REFS / case / "outputs.pt", weights_only=True)
    out = import_weights(str(REFS / case / STYLEGAN2_FILES[case]), tmp_path / "imported")
    state, G_ema, G, D = _imported_networks(out)
    conditional = ref["c"].shape[1] > 0
    y = ref["labels"] if conditional else None
    with torch.no_grad():
        checks = {
            "G_ema psi 1": _rel(G_ema(ref["z"], y, psi=1.0, noise_mode="const"), ref["G_ema_psi1"]),
            "G_ema psi 0.7": _rel(G_ema(ref["z"], y, psi=0.7, noise_mode="const"), ref["G_ema_psi07"]),
            "G psi 1": _rel(G(ref["z"], y, noise_mode="const"), ref["G_psi1"]),
            "D logits": _rel(D(ref["images"], y), ref["D_logits"].reshape(-1)),
        }
    assert all(err < RTOL for err in checks.values()), f"relative errors {checks} (bound {RTOL})"
    assert state["num_classes"] == (10 if conditional else 1)
    expected_p = {"sg2ada-uncond32": 0.237, "sg2ada-cond32": 0.5, "sg3-stylegan2-G": 0.1}.get(case)
    if expected_p is None:  # the published pickles carry no augment_pipe
        assert "ada_p" not in state
    else:
        assert float(state["ada_p"]) == pytest.approx(expected_p), "ADA's p was not carried over"
    kimg = {"sg2ada-uncond32": 40, "sg2ada-cond32": 12}.get(case, 0)
    assert state["images"] == kimg * 1000, "kimg from the snapshot's file name"


def test_imported_recipe_names_each_value_and_where_it_was_read(tmp_path):
    out = import_weights(str(REFS / "sg2ada-cond32/network-snapshot-000012.pkl"), tmp_path / "imported")
    recipe = (out / "recipe.yaml").read_text()
    assert "network-snapshot-000012.pkl" in recipe.splitlines()[1]
    for line in (r"model\.stylegan2\.fmap_base += 128 +<- G_ema\.init_kwargs\.synthesis_kwargs\.channel_base",
                 r"model\.num_classes += 10 +<- G_ema\.init_kwargs\.c_dim", r"augment\.ada += 'bgc'",
                 r"ADA's p was 0\.5"):  # fmt: skip
        assert re.search(line, recipe), f"{line!r} not in the header:\n{recipe[:2000]}"
    from bigtrain.config import load_config

    cfg = load_config(out / "recipe.yaml")  # the recipe is a valid one
    assert (
        cfg.model.stylegan2.fmap_base,
        cfg.model.stylegan2.fmap_max,
        cfg.model.z_dim,
        cfg.model.stylegan2.mapping_layers,
    ) == (
        128,
        16,
        32,
        2,
    )
    provenance = load_checkpoint(out)["imported"]
    assert len(provenance["file_sha256"]) == 64 and provenance["module_sources_sha256"]


def test_stylegan3_generator_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(
        WeightsError, match=r"holds a StyleGAN3 \(alias-free\) generator, which bigtrain does not"
    ) as e:
        import_weights(str(REFS / "sg3-stylegan3-G/sg3-stylegan3-G.pkl"), tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["biggan-shared-hier", "biggan-cifar"])
def test_imported_biggan_equals_the_references_outputs(tmp_path, case):
    """BigGAN-PyTorch's folder (its state_dict.pth holds nn.ReLU objects, read as stand-ins): G_ema, G
    and D for the same z, classes and images. Its u0 vectors are exact singular vectors, so the sigma
    estimates of the two spectral norms agree (see models.biggan.from_biggan_pytorch)."""
    ref = torch.load(REFS / case / "outputs.pt", weights_only=True)
    out = import_weights(str(REFS / case), tmp_path / "imported")
    state, G_ema, G, D = _imported_networks(out)
    y = ref["labels"]
    with torch.no_grad():
        checks = {
            "G_ema": _rel(G_ema(ref["z"], y), ref["G_ema_out"]),
            "G": _rel(G(ref["z"], y), ref["G_out"]),
            "D logits": _rel(D(ref["images"], y), ref["D_logits"].reshape(-1)),
        }
    assert all(err < RTOL for err in checks.values()), f"relative errors {checks} (bound {RTOL})"
    assert state["iteration"] == 1234 and state["num_classes"] == 10
    cfg = from_dict(state["config"])
    if case == "biggan-shared-hier":
        assert (
            cfg.model.resolution,
            cfg.model.biggan.shared_dim,
            cfg.model.biggan.hier,
            cfg.model.biggan.attn_res,
        ) == (
            64,
            8,
            True,
            [16],
        )
    else:
        assert (
            cfg.model.biggan.shared_dim,
            cfg.model.biggan.hier,
            cfg.model.biggan.init,
            cfg.train.n_disc_steps,
        ) == (
            0,
            False,
            "N02",
            4,
        )


def test_biggan_folder_values_that_bigtrain_cannot_build_are_refused(tmp_path):
    import numpy as np

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("G.pth", "G_ema.pth", "D.pth"):
        (folder / name).write_bytes((REFS / "biggan-cifar" / name).read_bytes())
    run = torch.load(REFS / "biggan-cifar/state_dict.pth", weights_only=False)  # our own file, trusted
    run["best_IS"] = np.float64(3.5)  # what BigGAN-PyTorch stores after an evaluation: read as a number
    torch.save(run, folder / "state_dict.pth")
    out = import_weights(str(folder), tmp_path / "ok")
    assert load_checkpoint(out)["imported"]["best_IS"] == 3.5
    for key, value, message in [
        ("D_attn", "16", r"D_attn='16' at 32x32: BigGAN-PyTorch's D_arch labels every block"),
        ("G_param", "SVD", r"G_param='SVD' has no bigtrain equivalent"),
        ("G_attn", "16", r"G_attn='16' and D_attn='0'; bigtrain puts self-attention"),
    ]:
        changed = {key: value, "G_attn": value} if key == "D_attn" else {key: value}
        torch.save({**run, "config": {**run["config"], **changed}}, folder / "state_dict.pth")
        with pytest.raises(WeightsError, match=message):
            import_weights(str(folder), tmp_path / "out")
    torch.save(
        {**run, "config": {**run["config"], "G_activation": torch.nn.Linear(1, 1)}}, folder / "state_dict.pth"
    )
    with pytest.raises(
        WeightsError, match=r"names torch\.nn\.modules\.linear\.Linear, which bigtrain refuses"
    ):
        import_weights(str(folder), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_from_a_url(tmp_path):
    """The same fsspec paths as data: a pickle and a BigGAN-PyTorch folder over HTTP (Python's server
    on 127.0.0.1), equal to the local imports."""
    from conftest import PYTHON, free_port, served

    port = free_port()
    cmd = [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(REFS)]
    with served(cmd, f"http://127.0.0.1:{port}/README.md", tmp_path / "http.log"):
        url = f"http://127.0.0.1:{port}"
        pickle_out = import_weights(f"{url}/sg2ada-cond32/network-snapshot-000012.pkl", tmp_path / "sg2")
        folder_out = import_weights(f"{url}/biggan-cifar/", tmp_path / "biggan")
        with pytest.raises(WeightsError, match="does not exist"):
            import_weights(f"{url}/missing.pkl", tmp_path / "missing")
    for out, local in (
        (pickle_out, REFS / "sg2ada-cond32/network-snapshot-000012.pkl"),
        (folder_out, REFS / "biggan-cifar"),
    ):
        remote_state, local_state = (
            load_checkpoint(out),
            load_checkpoint(import_weights(str(local), tmp_path / out.name / "local")),
        )
        assert remote_state["imported"]["source"].startswith("http://127.0.0.1")
        for net in ("G_ema", "D"):
            assert all(torch.equal(v, local_state[net][k]) for k, v in remote_state[net].items()), net


def test_resuming_an_imported_folder_says_to_fine_tune_instead(demo_shards, tmp_path):
    out = import_weights(str(REFS / "sg2ada-cond32/network-snapshot-000012.pkl"), tmp_path / "imported")
    result = subprocess.run([BIGTRAIN, "train", str(out / "recipe.yaml"), f"data.path={demo_shards}",
                             f"train.run_dir={out}", "track.enabled=false", "data.num_workers=0", "--resume"],
                            capture_output=True, text=True, env=cli_env())  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "holds weights brought in by `bigtrain import`, not a training checkpoint" in result.stderr
    assert f"train.init_from={out}" in result.stderr


def test_reference_settings_bigtrain_does_not_build_are_refused_by_name(tmp_path, nvlabs_format):
    """The file's networks must be the ones bigtrain builds: another G architecture, a mapping network
    of other widths, an unknown constructor argument are each one sentence naming the argument."""
    cfg = from_dict({}, [*SMALL["stylegan2-resnet"], "model.num_classes=1"])
    G, _ = build_models(cfg.model, 1)
    base = {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 32, "mapping_kwargs": {"num_layers": 2},
            "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "conv_clamp": 256}}  # fmt: skip
    cases = [
        ({"synthesis_kwargs": {**base["synthesis_kwargs"], "architecture": "resnet"}},
         r"G_ema's synthesis_kwargs\.architecture='resnet' has no bigtrain equivalent"),
        ({"mapping_kwargs": {"num_layers": 2, "layer_features": 8}},
         r"G_ema's mapping_kwargs\.layer_features=8 differs from w_dim=16"),
        ({"synthesis_kwargs": {**base["synthesis_kwargs"], "use_blur": True}},
         r"G_ema has the constructor argument synthesis_kwargs\.use_blur, which bigtrain does not know"),
        ({"img_channels": 1}, r"G_ema's img_channels=1 has no bigtrain equivalent"),
    ]  # fmt: skip
    for change, message in cases:
        path = tmp_path / "changed.pkl"
        top = {"G_ema": _as_persistent(G, "class Generator: pass", "Generator", {**base, **change})}
        path.write_bytes(pickle.dumps(top, protocol=4))
        with pytest.raises(WeightsError, match=message):
            import_weights(str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_published_pickles_converted_from_tensorflow_keep_every_argument_and_import(tmp_path, nvlabs_format):
    """NVlabs' published pickles (ffhq.pkl, metfaces.pkl) were converted from TF by its legacy.py, which
    writes every argument, an unconditional D's unused label-mapping settings included (0 layers, lr 0.1)."""
    cfg = from_dict({}, [*SMALL["stylegan2-resnet"], "model.num_classes=1"])
    G, D = build_models(cfg.model, 1)
    g = {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 32, "img_channels": 3,
         "mapping_kwargs": {"num_layers": 2, "embed_features": None, "layer_features": None, "activation": "lrelu",
                            "lr_multiplier": 0.01, "w_avg_beta": 0.995},
         "synthesis_kwargs": {"channel_base": 256, "channel_max": 16, "num_fp16_res": 4, "conv_clamp": 256,
                              "architecture": "skip", "resample_filter": [1, 3, 3, 1], "use_noise": True,
                              "activation": "lrelu"}}  # fmt: skip
    d = {"c_dim": 0, "img_resolution": 32, "img_channels": 3, "architecture": "resnet", "channel_base": 256,
         "channel_max": 16, "num_fp16_res": 4, "conv_clamp": 256, "cmap_dim": None,
         "block_kwargs": {"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "freeze_layers": 0},
         "mapping_kwargs": {"num_layers": 0, "embed_features": None, "layer_features": None, "activation": "lrelu",
                            "lr_multiplier": 0.1},
         "epilogue_kwargs": {"mbstd_group_size": 4, "mbstd_num_channels": 1, "activation": "lrelu"}}  # fmt: skip
    top = {"G": _as_persistent(G, "src", "Generator", g), "D": _as_persistent(D, "src", "Discriminator", d),
           "G_ema": _as_persistent(G, "src", "Generator", g)}  # fmt: skip
    path = tmp_path / "ffhq-like.pkl"
    path.write_bytes(pickle.dumps(top, protocol=4))
    state = load_checkpoint(import_weights(str(path), tmp_path / "out"))
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in state["G_ema"].items())
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in state["D"].items())
