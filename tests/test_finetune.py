"""Fine-tuning onto characters the base model lacks (`--init-from`): the vocabulary grows,
the base's predictions are untouched at step 0, and the new characters can be learned."""

import dataclasses
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import charrnn
from charrnn import paths
from charrnn.checkpoint import store as checkpoint
from charrnn.cli.app import main
from charrnn.config import ModelConfig
from charrnn.events import Note
from charrnn.model.network import CharRNN
from charrnn.text.characters import CharCounter, CharVocab
from charrnn.training.finetune import NEW_BIAS, added_chars, extend_weights
from charrnn.training.run import Run

# Written for these tests: a few KB of French with the accents the English model lacks.
FRENCH = (
    "Le matin, la brume couvrait encore la rivière quand Hélène ouvrit la fenêtre. « Déjà l'été ! » "
    "dit-elle à son frère, qui lisait près du foyer. Il leva les yeux, sourit, et répondit qu'il "
    "préférait l'automne, ses forêts rousses et le bruit des châtaignes sous les pas. Où irons-nous "
    "dimanche ? Au marché du village, où l'on vend du pain, des pêches et du fromage de chèvre. "
    "Ça me plaît, répondit-elle ; nous déjeunerons sous le tilleul, près de l'église.\n"
)
SMALL = ["--batch-size", "4", "--seq-len", "16", "--threads", "1", "-q"]


def base_net(cell: str, one_hot: bool = False, tied: bool = False, vocab_size: int = 9) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab_size, hidden_size=16, num_layers=2, embedding_size=16, dropout=0.0,
                         cell=cell, one_hot=one_hot, tie_weights=tied)
    net = CharRNN(config).eval()
    with torch.no_grad():  # a base whose logits span a realistic range, not all near 0
        net.head.bias.normal_(0, 2)
    return net


def grown(net: CharRNN, vocab_size: int) -> CharRNN:
    config = dataclasses.replace(net.config, vocab_size=vocab_size)
    out = CharRNN(config).eval()
    out.load_state_dict(extend_weights(net.state_dict(), net.config, vocab_size))
    return out


# -- the vocabulary ---------------------------------------------------------------------------
def test_extended_vocabulary_keeps_base_ids_and_appends_new_characters_sorted():
    base = CharVocab.from_text("the cat\n")
    vocab = base.extended("déjà été à")
    assert vocab.chars[: base.size] == base.chars
    assert vocab.chars[base.size :] == sorted(set("déjà été à") - set(base.chars))  # à é j, once each
    assert added_chars(base, vocab) == ("d", "j", "à", "é")
    # ê is in neither
    with pytest.raises(charrnn.errors.VocabularyError, match="outside the model's vocabulary"):
        vocab.encode("la tête")
    assert vocab.decode(vocab.encode("déjà the cat")) == "déjà the cat"
    assert list(vocab.encode("the cat")) == list(base.encode("the cat"))
    assert CharVocab.from_dict(vocab.to_dict()).chars == vocab.chars  # the unsorted order survives a checkpoint
    assert base.extended("cat") is base


def test_a_counter_with_a_base_builds_the_base_extended():
    base = CharVocab.from_text("abc")
    counter = CharCounter(base=base)
    counter.add("cab")
    assert counter.vocab() is base
    counter.add("ça")
    assert counter.vocab().chars == ["a", "b", "c", "ç"]


def test_a_vocabulary_with_repeats_is_refused():
    with pytest.raises(charrnn.errors.VocabularyError, match="without repeats"):
        CharVocab(["a", "b", "a"])


# -- the weights at step 0 ---------------------------------------------------------------------
INPUTS = [("lstm", False, False), ("gru", False, False), ("rnn", False, False),
          ("lstm", True, False), ("gru", True, False), ("rnn", True, False),
          ("lstm", False, True), ("gru", False, True)]


@pytest.mark.parametrize("cell, one_hot, tied", INPUTS,
                         ids=[f"{c}-{'onehot' if o else 'tied' if t else 'embedding'}" for c, o, t in INPUTS])
def test_old_logits_unchanged_and_new_characters_improbable_at_step_0(cell, one_hot, tied):
    base = base_net(cell, one_hot, tied)
    V = base.config.vocab_size
    net = grown(base, V + 5)
    ids = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(1))  # old characters only
    with torch.no_grad():
        want, _ = base(ids)  # (B, T, V)
        got, _ = net(ids)  # (B, T, V + 5)
    assert torch.allclose(got[..., :V], want, rtol=0, atol=1e-6)
    assert got.softmax(-1)[..., V:].max() < 1e-6
    state_a, state_b = base.init_state(3), net.init_state(3)  # the per-character step too
    for t in range(ids.size(1)):
        step_a, state_a = base.step(ids[:, t], state_a)
        step_b, state_b = net.step(ids[:, t], state_b)
        assert torch.allclose(step_b[:, :V], step_a, rtol=0, atol=1e-6)
    if tied:
        assert net.head.weight is net.embedding.weight


def test_float16_weights_grow_in_their_own_dtype():
    base = base_net("lstm")
    half = {k: v.half() for k, v in base.state_dict().items()}
    out = extend_weights(half, base.config, base.config.vocab_size + 2)
    assert all(v.dtype == torch.float16 for v in out.values())
    assert out["head.bias"][-2:].tolist() == [NEW_BIAS, NEW_BIAS]


def test_a_smaller_vocabulary_is_refused():
    base = base_net("gru")
    with pytest.raises(charrnn.errors.CheckpointError, match="cannot hold"):
        extend_weights(base.state_dict(), base.config, 3)


@pytest.mark.parametrize("one_hot, tied", [(False, False), (True, False), (False, True)])
def test_training_lowers_the_loss_of_new_characters(one_hot, tied):
    """The gradient reaches the new rows: a few Adam steps on text full of new ids lower
    their loss from about -NEW_BIAS nats."""
    base = base_net("lstm", one_hot, tied, vocab_size=4)
    net = grown(base, 7).train()
    torch.manual_seed(3)
    ids = torch.tensor([[0, 4, 1, 5, 2, 6, 3] * 6] * 4)  # every other character new
    x, y = ids[:, :-1], ids[:, 1:]
    new = y >= 4

    def new_loss() -> float:
        with torch.no_grad():
            logits, _ = net(x)
        return F.cross_entropy(logits[new], y[new]).item()

    before = new_loss()
    assert before > -NEW_BIAS - 5
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for step in range(30):
        logits, _ = net(x)
        loss = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert (net.head.bias.grad[4:] < 0).all()  # pulled up where they are the target
            assert net.head.weight.grad[4:].abs().sum() > 0
            table = net.rnn.weight_ih_l0 if one_hot else net.embedding.weight
            grad = table.grad[:, 4:] if one_hot else table.grad[4:]
            assert grad.abs().sum() > 0
        opt.step()
    assert new_loss() < before - 5


# -- through a run ------------------------------------------------------------------------------
@pytest.fixture
def base_run(tmp_path, random_checkpoint):
    """A run folder holding the random checkpoint (GRU, vocabulary 'abcdefg \\n')."""
    run = tmp_path / "checkpoints" / "letters"
    run.mkdir(parents=True)
    shutil.copy(random_checkpoint, run / "best.pt")
    return run


def test_fine_tuning_grows_the_vocabulary_notes_it_and_resumes(tmp_path, base_run):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("bébé a déçà, ça fée " * 200, encoding="utf-8")
    events = []
    result = charrnn.train(corpus, out=tmp_path / "fr", init_from=base_run, max_steps=3, batch_size=4, seq_len=16,
                           eval_every=3, on_event=events.append)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert "the vocabulary grows by 4 characters the base model lacks: , à ç é" in notes
    ckpt = checkpoint.load(tmp_path / "fr" / "latest.pt")
    base = checkpoint.load(base_run / "best.pt")
    vocab = ckpt.vocabulary()
    assert vocab.chars == base.vocabulary().chars + [",", "à", "ç", "é"]
    assert ckpt.model_config.vocab_size == vocab.size == base.model_config.vocab_size + 4
    assert ckpt.corpus["init_from"] == str(base_run) and ckpt.corpus["added_chars"] == ",àçé"
    assert result.steps == 3
    # resumed, the grown vocabulary is the run's own: no growth, no note, same ids
    events.clear()
    result = charrnn.train(corpus, out=tmp_path / "fr", resume=True, max_steps=5, on_event=events.append)
    assert result.steps == 5 and not [e for e in events if isinstance(e, Note)]
    resumed = checkpoint.load(tmp_path / "fr" / "latest.pt")
    assert resumed.vocabulary().chars == vocab.chars
    assert resumed.corpus["added_chars"] == ",àçé" and resumed.corpus["init_from"] == str(base_run)


def test_a_corpus_inside_the_base_vocabulary_keeps_it_and_its_weights(tmp_path, base_run):
    corpus = tmp_path / "c.txt"
    corpus.write_text("bad cafe\n" * 200)  # uses only some of 'abcdefg \n'
    events = []
    with Run(corpus, out=tmp_path / "c", init_from=str(base_run),
                          train_options={"max_steps": 1}, on_event=events.append) as run:
        base = checkpoint.load(base_run / "best.pt")
        assert run.plan.corpus.vocab.chars == base.vocabulary().chars  # unused characters stay, ids unchanged
        for k, v in run.trainer.model.state_dict().items():
            assert torch.equal(v, base.weights[k])
    assert not [e for e in events if isinstance(e, Note)]


def test_the_fine_tuned_run_learns_to_write_the_new_characters(tmp_path, base_run):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("abé cadé fée bébé " * 300, encoding="utf-8")
    result = charrnn.train(corpus, out=tmp_path / "fr", init_from=base_run, max_steps=150, batch_size=8,
                           seq_len=16, lr=2e-2, warmup_steps=5, eval_every=150, seed=1)
    text = "".join(result.load().generate(length=300, seed=0))
    assert text.count("é") > 20, text


def test_init_from_a_run_name_under_the_checkpoints_folder(tmp_path, base_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text("abc fed\n" * 200)
    result = CliRunner().invoke(main, ["train", "c.txt", "--out", "tuned", "--init-from", "letters",
                                       "--checkpoints-dir", "checkpoints", "--max-steps", "1", *SMALL])
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(tmp_path / "tuned" / "latest.pt").corpus["init_from"] == "letters"


def test_init_from_bundled_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fr.txt").write_text(FRENCH * 8, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "fr.txt", "--init-from", "bundled", "--out", "fr", "--max-steps", "2",
                                       "--eval-every", "2", "--batch-size", "2", "--seq-len", "16", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert "Note: the vocabulary grows by 10 characters the base model lacks: « » Ç à â è é ê î ù" \
           in " ".join(result.stderr.split()), result.stderr
    ckpt = checkpoint.load(tmp_path / "fr" / "best.pt")
    bundled = checkpoint.load(paths.BUNDLED)
    assert ckpt.vocabulary().chars[: bundled.model_config.vocab_size] == bundled.vocabulary().chars
    assert ckpt.model_config.vocab_size == bundled.model_config.vocab_size + 10
    assert ckpt.corpus["init_from"] == "bundled"
    sample = CliRunner().invoke(main, ["sample", "-c", "fr", "--length", "40", "--seed", "1", "--prime", "Hélène"])
    assert sample.exit_code == 0 and sample.stdout.startswith("Hélène"), sample.stderr


def test_completion_offers_bundled_and_run_names(tmp_path, base_run, monkeypatch):
    from click.shell_completion import ShellComplete

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARRNN_CHECKPOINTS")  # the built-in ./checkpoints
    complete = ShellComplete(main, {}, "charrnn", "_CHARRNN_COMPLETE")
    names = [c.value for c in complete.get_completions(["train", "c.txt", "--init-from"], "")]
    assert names[:2] == ["letters", "bundled"]
    assert [c.value for c in complete.get_completions(["train", "c.txt", "--init-from"], "le")][0] == "letters"


# -- sentencepiece bases keep their pieces --------------------------------------------------------
def test_init_from_a_sentencepiece_model_keeps_its_vocabulary(tmp_path):
    english = tmp_path / "en.txt"
    english.write_text("the cat sat on the mat and the dog sat on the log.\n" * 100)
    charrnn.train(english, out=tmp_path / "en", tokenizer="sentencepiece", vocab_size=300, max_steps=1,
                  hidden_size=16, num_layers=1, embedding_size=8, batch_size=2, seq_len=16)
    base = checkpoint.load(tmp_path / "en" / "latest.pt")
    french = tmp_path / "fr.txt"
    french.write_text(FRENCH * 4, encoding="utf-8")
    events = []
    charrnn.train(french, out=tmp_path / "fr", init_from=tmp_path / "en", max_steps=1, batch_size=2, seq_len=16,
                  on_event=events.append)
    tuned = checkpoint.load(tmp_path / "fr" / "latest.pt")
    assert tuned.vocab == base.vocab and tuned.model_config == base.model_config
    assert tuned.corpus["added_chars"] == ""
    assert not [e for e in events if isinstance(e, Note) and "vocabulary grows" in e.text]
    assert tuned.vocabulary().decode(tuned.vocabulary().encode(FRENCH)) == FRENCH  # byte pieces cover the accents


# -- errors stay one sentence ----------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--init-from", "nope.pt"], "Error: Checkpoint nope.pt does not exist."),
    (["--init-from", ""], "Error: The checkpoint path is empty"),
    (["--init-from", "bundled", "--tokenizer", "sentencepiece"],
     "Error: Cannot fine-tune from bundled with different settings: --tokenizer sentencepiece (the run has char)."),
    (["--init-from", "bundled", "--hidden-size", "64"], "Cannot fine-tune from bundled with different settings"),
    (["--init-from", "bundled", "--resume"], "Use either --resume or --init-from, not both."),
])
def test_fine_tuning_errors_are_one_sentence(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fr.txt").write_text(FRENCH, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "fr.txt", "--out", "fr", "--max-steps", "1", *argv, *SMALL])
    assert result.exit_code == 1, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "fr" / "latest.pt").exists()


def test_new_characters_start_below_one_in_a_million_for_the_bundled_model():
    """The constant is chosen for real models too, whose logits are larger than a random one's."""
    bundled = checkpoint.load(paths.BUNDLED)
    base = CharRNN(bundled.model_config).eval()
    base.load_state_dict(bundled.weights)
    net = grown(base, bundled.model_config.vocab_size + 4)
    text = (charrnn.paths.BUNDLED.parents[2] / "corpora" / "tinyshakespeare.txt").read_text()[:1000]
    ids = torch.tensor(bundled.vocabulary().encode(text).astype("int64"))[None]  # (1, T)
    with torch.no_grad():
        want, _ = base(ids)
        got, _ = net(ids)
    assert torch.equal(got[..., : want.size(-1)], want)
    assert got.softmax(-1)[..., want.size(-1):].sum(-1).max() < 1e-6
    assert math.isfinite(got.sum().item())
