import pytest

from bigtrain.config import ConfigError, from_dict, load_config, validate


def test_defaults_load_and_overrides_apply():
    cfg = load_config(
        None, ["train.batch=512", "optim.lr_d=4e-4", "model.biggan.attn_res=[16, 32]", "model.resolution=64"]
    )
    assert cfg.train.batch == 512
    assert cfg.optim.lr_d == pytest.approx(4e-4)
    assert cfg.model.biggan.attn_res == [16, 32]


def test_recipe_files_all_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(p for p in configs.glob("*/*.yaml") if p.parent.name != "tune")
    families = {p.parent.name for p in recipes}
    assert {"biggan", "progan", "stylegan2"} <= families and len(recipes) >= 13, recipes
    for path in recipes:
        load_config(path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.bach=3", "train.bach"),
        ("nosection.x=1", "nosection"),
        ("train.batch=abc", "train.batch"),
        ("train.batch=2.5", "train.batch"),
        ("model.resolution=48", "model.resolution"),
        ("model.resolution=2048", "model.resolution"),
        ("optim.lr_g=-1", "optim.lr_g"),
        ("optim.beta2=1.0", "optim.beta2"),
        ("loss.name=wgan-gan", "loss.name"),
        ("train.compile=maybe", "train.compile"),
        ("model.biggan.attn_res=[12]", "model.biggan.attn_res"),
        ("model.biggan.init=xavier", "model.biggan.init"),
        ("model.stylegan2.d_architecture=deep", "model.stylegan2.d_architecture"),
        ("model.biggan.ch=0", "model.biggan.ch"),
        ("model.name=nosuchgan", "model.name"),
        ("model.biggan.nosuch=1", "model.biggan.nosuch"),
        ("optim.lr_decay=cosine", "optim.lr_decay"),
        ("ema.halflife_kimg=0", "ema.halflife_kimg"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value), f"message {e.value!r} does not name {key}"


def test_batch_must_divide_by_world_times_accum():
    cfg = load_config(None, ["train.batch=100", "train.accum=4"])
    validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"train\.batch=100 .* 8 x 4 = 32"):
        validate(cfg, world_size=8)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["batch512"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  optim:\n    lr: 1\n")
    with pytest.raises(ConfigError, match="train.optim"):
        load_config(nested)


def test_a_recipe_of_the_flat_model_layout_still_loads(caplog):
    """Before each family had its section, `model` held every family's knobs flat (and checkpoints
    stored all of them): a family's own move into `model.<name>`, another family's (which that layout
    never read) are dropped, and the warning names both."""
    flat = {
        "model": {"name": "stylegan2", "resolution": 32, "fmap_base": 1024, "w_dim": 64, "mbstd_group": 2,
                  "d_architecture": "skip", "ch": 96, "attn_res": [16]},
    }  # fmt: skip
    nested = {
        "model": {"name": "stylegan2", "resolution": 32,
                  "stylegan2": {"fmap_base": 1024, "w_dim": 64, "mbstd_group": 2, "d_architecture": "skip"}},
    }  # fmt: skip
    with caplog.at_level("WARNING"):
        old = from_dict(flat)
    assert old == from_dict(nested), "the flat layout must build the same config as the nested one"
    message = caplog.text
    assert "model.fmap_base -> model.stylegan2.fmap_base" in message and "model.ch" in message, message
    assert "dropped, not read by stylegan2" in message, message
    # A value given both ways: the section's wins (it is the new layout's).
    both = from_dict({"model": {"name": "biggan", "ch": 8, "biggan": {"ch": 16}}})
    assert both.model.biggan.ch == 16
    # Dotted overrides of the old keys follow the recipe's family.
    assert load_config(None, ["model.name=progan", "model.fmap_base=512"]).model.progan.fmap_base == 512


def test_every_family_has_a_section_and_only_its_own_rules_apply():
    from bigtrain.models import FAMILIES

    cfg = load_config(None, ["model.name=progan", "model.resolution=64", "model.progan.fmap_base=64"])
    assert cfg.model.section is cfg.model.progan
    with pytest.raises(ConfigError, match=r"model\.progan\.fmap_base=16 leaves no feature maps at 64x64"):
        load_config(None, ["model.name=progan", "model.resolution=64", "model.progan.fmap_base=16"])
    # Another family's section is not the run's: its rules do not apply (biggan's attention at 64 px).
    load_config(None, ["model.name=progan", "model.resolution=32", "model.biggan.attn_res=[64]"])
    for name in FAMILIES:
        assert hasattr(cfg.model, name), f"no model.{name} section"
