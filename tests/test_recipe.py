from pathlib import Path

import pytest
import yaml

from gsx.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    recipe = load_recipe(None)
    assert recipe.sae.hook_name == "blocks.5.hook_resid_post"
    assert recipe.layer == 5
    assert recipe.training.total_steps == recipe.training.training_tokens // recipe.training.train_batch_size_tokens


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    assert recipe.run.name


def test_l22_recipe_matches_seed_scale():
    recipe = load_recipe(REPO / "recipes" / "l22.yaml")
    assert recipe.model.name == "google/gemma-3-1b-pt"
    assert recipe.sae.hook_name == "blocks.22.hook_resid_post"
    assert recipe.sae.d_sae == 16384
    assert recipe.training.total_steps == 50_000
    assert recipe.training.checkpoint_every_steps == 5_000
    assert recipe.training.lr == pytest.approx(3e-4)
    assert recipe.sae.l0_coefficient == pytest.approx(1e-3)


def test_packaged_smoke_recipe_matches_copy():
    packaged = yaml.safe_load((REPO / "gsx" / "recipes" / "smoke.yaml").read_text())
    shipped = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())
    assert packaged == shipped


def test_unknown_key_suggests_name(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "training:\n  lr_warmup_steps: 10\n"))
    message = str(err.value)
    assert "training.lr_warmup_steps" in message
    assert "lr_warm_up_steps" in message


def test_unknown_section_rejected(tmp_path):
    with pytest.raises(RecipeError, match="optimizer: unknown key"):
        load_recipe(write(tmp_path, "optimizer:\n  lr: 1\n"))


def test_wrong_type_names_key_and_type(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "sae:\n  d_sae: many\n"))
    assert "sae.d_sae" in str(err.value)
    assert "'many'" in str(err.value)
    assert "int" in str(err.value)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(RecipeError, match="sae.d_sae"):
        load_recipe(write(tmp_path, "sae:\n  d_sae: true\n"))


@pytest.mark.parametrize(
    ("override", "key", "fix"),
    [
        ("sae.hook_name=blocks.18.hook_resid_post", "sae.hook_name", "0..17"),
        ("sae.d_sae=0", "sae.d_sae", "positive"),
        ("training.lr=-0.001", "training.lr", "positive"),
        ("training.checkpoint_every_steps=100000", "training.checkpoint_every_steps", "the run's"),
        ("sae.hook_name=blocks.2.mlp", "sae.hook_name", "hook_resid_post"),
        ("sae.jumprelu_sparsity_loss_mode=quadratic", "sae.target_l0", "target_l0"),
        ("data.eval_fraction=1.5", "data.eval_fraction", "between 0 and 1"),
        ("training.n_batches_in_buffer=2", "training.n_batches_in_buffer", "at least 8"),
        ("model.source=cloud", "model.source", "auto, packaged"),
    ],
)
def test_out_of_range_values_rejected(override, key, fix):
    with pytest.raises(RecipeError) as err:
        load_recipe(None, [override])
    assert key in str(err.value)
    assert fix in str(err.value)


def test_set_override_parses_types():
    recipe = load_recipe(None, ["training.lr=1e-3", "sae.d_sae=512", "run.overwrite=true", "data.max_documents=null"])
    assert recipe.training.lr == pytest.approx(1e-3)
    assert recipe.sae.d_sae == 512
    assert recipe.run.overwrite is True
    assert recipe.data.max_documents is None


def test_set_override_needs_section_and_key():
    with pytest.raises(RecipeError, match="SECTION.KEY=VALUE"):
        load_recipe(None, ["lr=1e-3"])


def test_missing_file_named(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_is_safe_loaded(tmp_path):
    # A Python object tag would run code under yaml.load; safe_load rejects it.
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "run: !!python/object/apply:os.system ['echo hi']\n"))


def test_files_corpus_needs_path():
    with pytest.raises(RecipeError, match="data.path"):
        load_recipe(None, ["data.corpus=files"])


def test_builtin_defaults_match_default_recipe():
    # Commands that take no --recipe use the built-in defaults; they must be the
    # same run as recipes/gemma3-270m-l5.yaml.
    assert load_recipe(None) == load_recipe(REPO / "recipes" / "gemma3-270m-l5.yaml")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_rejected(value):
    with pytest.raises(RecipeError, match="finite"):
        load_recipe(None, [f"training.lr={value}"])
