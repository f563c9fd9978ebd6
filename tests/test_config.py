import pytest

from bigtrain.config import ConfigError, load_config, validate


def test_defaults_load_and_overrides_apply():
    cfg = load_config(
        None, ["train.batch=512", "optim.lr_d=4e-4", "model.attn_res=[16, 32]", "model.resolution=64"]
    )
    assert cfg.train.batch == 512
    assert cfg.optim.lr_d == pytest.approx(4e-4)
    assert cfg.model.attn_res == [16, 32]


def test_recipe_files_all_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(
        [*configs.glob("biggan/*.yaml"), *configs.glob("progan/*.yaml"), *configs.glob("stylegan2/*.yaml")]
    )
    assert len(recipes) >= 7, recipes
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
        ("model.attn_res=[12]", "model.attn_res"),
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
