"""The sizing rule: model width and dropout follow the corpus and the budget."""

import math

import pytest
import torch

from charrnn import train
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.training import sizing
from charrnn.training.run import Run


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("one_hot,tied", [(False, False), (True, False), (False, True)])
def test_parameter_formula_matches_the_model(cell, one_hot, tied):
    hidden = 24 if tied else 40
    config = ModelConfig(vocab_size=30, hidden_size=hidden, num_layers=3, embedding_size=24, cell=cell,
                         one_hot=one_hot, tie_weights=tied)
    expected = CharRNN(config).num_parameters()
    assert sizing.count_parameters(cell, hidden, 3, config.input_size, 30, embedding=not one_hot, tied=tied) == expected


def choose(train_tokens, tokens_seen, cell="lstm", **kw):
    return sizing.choose(cell=cell, num_layers=2, input_size=64, vocab_size=65, train_tokens=train_tokens,
                         tokens_per_step=32 * 128, max_epochs=tokens_seen / train_tokens, **kw)


def test_dropout_follows_the_passes_over_the_text():
    assert sizing.dropout_for(0.3) == 0.0 and sizing.dropout_for(2.0) == 0.0
    assert sizing.dropout_for(4.0) == pytest.approx(0.1)
    assert sizing.dropout_for(16.0) == pytest.approx(0.3)
    assert sizing.dropout_for(1000.0) == sizing.MAX_DROPOUT
    values = [sizing.dropout_for(e) for e in (1.5, 3, 6, 12, 24)]
    assert values == sorted(values)


def test_small_corpus_gets_a_small_regularised_model_and_big_corpus_no_dropout():
    small = choose(50_000, 4.5e6)  # 10 minutes of CPU on a 50 KB text: ~90 passes
    shakespeare = choose(1_000_000, 4.5e6)
    big = choose(50_000_000, 4.5e6)  # the same budget on 50 MB: a tenth of one pass
    assert small.hidden_size < shakespeare.hidden_size
    assert small.limit == "corpus" and small.dropout == sizing.MAX_DROPOUT
    assert sizing.count_parameters("lstm", small.hidden_size, 2, 64, 65) <= sizing.PARAMS_PER_TOKEN * 50_000
    assert big.dropout == 0.0 and big.limit == "budget"
    assert big.hidden_size >= 384  # not starved: as large as the budget can train
    assert shakespeare.dropout == 0.0 and shakespeare.weight_drop < 0.1  # ~4.5 passes: barely regularised
    assert small.weight_drop == 0.0 and big.weight_drop == 0.0


def test_the_lstm_gets_weight_drop_between_its_pass_limits_and_dropout_beyond():
    low, high = sizing.WEIGHT_DROP_MIN_PASSES, sizing.WEIGHT_DROP_MAX_PASSES
    assert sizing.regularisation_for("lstm", 1.5) == (0.0, 0.0)
    assert sizing.regularisation_for("lstm", low) == (0.0, 0.0)  # no dropout either at a few passes
    assert sizing.regularisation_for("lstm", 2 * low) == (0.0, pytest.approx(sizing.WEIGHT_DROP_PER_DOUBLING))
    drops = [sizing.regularisation_for("lstm", e)[1] for e in (low * 1.1, 6, 8, 11, high)]
    assert drops == sorted(drops) and 0 < drops[0] and drops[-1] <= sizing.MAX_DROPOUT
    assert sizing.regularisation_for("lstm", high * 1.1) == (sizing.dropout_for(high * 1.1), 0.0)
    assert sizing.regularisation_for("lstm", 100.0) == (sizing.MAX_DROPOUT, 0.0)
    for cell in ("gru", "rnn"):  # weight drop is unmeasured for them: dropout as before
        for passes in (3.0, 8.0, 30.0):
            assert sizing.regularisation_for(cell, passes) == (sizing.dropout_for(passes), 0.0)


def test_larger_budgets_never_give_smaller_models():
    sizes = [choose(10_000_000, seen).hidden_size for seen in (1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.6e8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_time_budget_uses_measured_throughput_and_stops_timing_early():
    timed = []

    def throughput(hidden):  # tokens/s falling with the square of the width, as on a CPU
        timed.append(hidden)
        return 3e9 / hidden**2

    choice = sizing.choose(cell="lstm", num_layers=2, input_size=64, vocab_size=65, train_tokens=10**8,
                           tokens_per_step=4096, max_time=600.0, throughput=throughput)
    params = sizing.count_parameters("lstm", choice.hidden_size, 2, 64, 65)
    assert params <= choice.tokens_seen / sizing.TOKENS_PER_PARAM
    assert choice.tokens_seen == pytest.approx(600.0 * 3e9 / choice.hidden_size**2)
    assert choice.tokens_seen / 4096 >= sizing.MIN_STEPS
    bigger = sizing.LADDER[sizing.LADDER.index(choice.hidden_size) + 1]
    seen_bigger = 600.0 * 3e9 / bigger**2
    assert (sizing.count_parameters("lstm", bigger, 2, 64, 65) > seen_bigger / sizing.TOKENS_PER_PARAM
            or seen_bigger / 4096 < sizing.MIN_STEPS)
    first_timings = list(dict.fromkeys(timed))  # a narrow miss is timed twice in a row
    assert first_timings == list(sizing.LADDER[: len(first_timings)]) and timed[-1] <= bigger  # never past the first too large
    assert all(timed.count(h) == 1 for h in first_timings[:-1])  # only the size that missed is timed again


def test_a_width_that_misses_narrowly_is_timed_again_and_a_clear_miss_is_not():
    # 2 x 512 needs about 1.66M tokens in 600 s (half a token per weight). A slow moment
    # during its first timing (2,400 tokens/s, 1.44M) must not decide the run when a
    # second timing shows the machine's usual speed (3,300, 1.98M).
    kw = dict(cell="lstm", num_layers=2, input_size=64, vocab_size=65, train_tokens=10**6, tokens_per_step=2048,
              max_time=600.0, ladder=(256, 384, 512, 768))
    usual = {256: 11000.0, 384: 5000.0, 512: 3300.0, 768: 1500.0}

    def run(first_512):
        calls = []

        def throughput(hidden):
            calls.append(hidden)
            return first_512 if hidden == 512 and calls.count(512) == 1 else usual[hidden]

        return sizing.choose(throughput=throughput, **kw), calls

    narrow, calls = run(2400.0)
    assert narrow.hidden_size == 512 and calls == [256, 384, 512, 512]
    assert narrow.tokens_seen == pytest.approx(600.0 * 3300.0)
    clear, calls = run(900.0)  # 3.7 times too slow: no second look
    assert clear.hidden_size == 384 and calls == [256, 384, 512] and clear.limit == "budget"
    steady, calls = run(3300.0)  # fast enough the first time: timed once, as before
    assert steady.hidden_size == 512 and calls == [256, 384, 512]


def test_a_time_budget_keeps_enough_optimizer_steps_but_a_step_budget_needs_none():
    # 2 x 512 would see enough tokens per weight in the budget, but in only MIN_STEPS / 2
    # optimizer steps: under a time budget that is too few, and a narrower model is taken.
    params_512 = sizing.count_parameters("lstm", 512, 2, 64, 65)
    half = sizing.MIN_STEPS // 2
    per_step = math.ceil(params_512 * sizing.TOKENS_PER_PARAM * 1.01 / half)
    tokens_512 = per_step * half
    kw = dict(cell="lstm", num_layers=2, input_size=64, vocab_size=65, train_tokens=10**8,
              tokens_per_step=per_step, ladder=(128, 256, 384, 512))

    def throughput(hidden):
        return tokens_512 / 600.0 * (512 / hidden) ** 2

    by_time = sizing.choose(max_time=600.0, throughput=throughput, **kw)
    assert by_time.hidden_size < 512 and by_time.tokens_seen / per_step >= sizing.MIN_STEPS
    assert by_time.limit == "steps"
    # The same tokens as a step budget: the width does not change the steps, so 2 x 512.
    assert sizing.choose(max_steps=half, **kw).hidden_size == 512
    # A longer time budget with that step budget: the steps end the run, 2 x 512 again.
    assert sizing.choose(max_time=6000.0, max_steps=half, throughput=throughput, **kw).hidden_size == 512


def test_real_throughput_measurement_is_positive_and_leaves_the_rng_alone():
    rate = sizing.measure_throughput(lambda h: CharRNN(ModelConfig(vocab_size=20, hidden_size=h, num_layers=1,
                                                                   embedding_size=8)),
                                     batch_size=4, seq_len=16, vocab_size=20, device=torch.device("cpu"))
    before = torch.get_rng_state()
    assert rate(16) > 0 and math.isfinite(rate(32))
    assert torch.equal(before, torch.get_rng_state())


def test_options_the_user_gives_are_kept_and_the_rest_sized(shakespeare_head, tmp_path):
    with Run(shakespeare_head, out=tmp_path / "a", train_options={"max_epochs": 0.5, "device": "cpu"}) as run:
        plan = run.plan
    assert plan.model_config.dropout == 0.0 and plan.model_config.weight_drop == 0.0  # half a pass: nothing to regularise
    assert plan.sizing.auto == ("hidden_size", "dropout", "weight_drop")
    assert plan.model_config.hidden_size == plan.sizing.hidden_size

    with Run(shakespeare_head, out=tmp_path / "b", model_options={"hidden_size": 40, "dropout": None},
             train_options={"max_epochs": 8, "device": "cpu"}) as run:
        plan = run.plan
    assert plan.model_config.hidden_size == 40
    assert plan.model_config.weight_drop == pytest.approx(0.2) and plan.model_config.dropout == 0.0  # 8 passes
    assert plan.sizing.auto == ("dropout", "weight_drop")

    with Run(shakespeare_head, out=tmp_path / "g", model_options={"hidden_size": 40, "cell": "gru"},
             train_options={"max_epochs": 8, "device": "cpu"}) as run:
        assert run.plan.model_config.dropout == pytest.approx(0.2) and run.plan.model_config.weight_drop == 0.0

    # Naming either regulariser takes the pair out of the rule's hands: the other is 0.
    for given, other in (("dropout", "weight_drop"), ("weight_drop", "dropout")):
        with Run(shakespeare_head, out=tmp_path / given, model_options={"hidden_size": 40, given: 0.05},
                 train_options={"max_epochs": 8, "device": "cpu"}) as run:
            config = run.plan.model_config
            assert getattr(config, given) == 0.05 and getattr(config, other) == 0.0 and run.plan.sizing is None
            assert run.trainer.corpus.get("sizing") is None


@pytest.mark.slow
def test_defaults_keep_learning(shakespeare_head, tmp_path):
    """Regression guard for the default settings: a short run of everything-default on
    60 KB of Shakespeare must get clearly below a unigram model (about 3.3 nats/char)."""
    run = train(shakespeare_head, out=tmp_path / "d", max_steps=120, eval_every=60, device="cpu", seed=1)
    model = run.load()
    assert model.net.config.cell == "lstm" and model.net.config.num_layers == 2
    assert run.best_val_loss < 2.45, run.best_val_loss


@pytest.mark.parametrize("cell, optimizer, lr", [("lstm", "muon", 5e-3), ("gru", "adamw", 5e-3), ("rnn", "adamw", 3e-3)])
def test_optimizer_and_learning_rate_default_per_cell_and_given_ones_are_kept(cell, optimizer, lr, shakespeare_head, tmp_path):
    small = {"cell": cell, "hidden_size": 16, "embedding_size": 8, "dropout": 0.0}
    with Run(shakespeare_head, out=tmp_path / "a", model_options=small,
             train_options={"max_steps": 1, "device": "cpu"}) as run:
        assert (run.trainer.config.optimizer, run.trainer.config.lr) == (optimizer, lr)
    with Run(shakespeare_head, out=tmp_path / "c", model_options=small,
             train_options={"max_steps": 1, "device": "cpu", "optimizer": "adamw"}) as run:
        assert run.trainer.config.lr == sizing.LEARNING_RATE[cell]  # AdamW's rate for the cell
    with Run(shakespeare_head, out=tmp_path / "b", model_options=small,
             train_options={"max_steps": 1, "device": "cpu", "lr": 0.02}) as run:
        assert run.trainer.config.lr == 0.02


def test_many_passes_over_a_small_text_train_with_adamw_unless_muon_is_named(shakespeare_head, tmp_path):
    """Muon lost to AdamW at 38 passes over 50 KB and won at 0.1-2.2 passes: a sized run
    expected to make more than MUON_MAX_PASSES passes gets AdamW and AdamW's rate."""
    small = {"hidden_size": 16, "embedding_size": 8}  # the dropout is sized, so the passes are known
    many, few = sizing.MUON_MAX_PASSES * 2, sizing.MUON_MAX_PASSES / 2
    with Run(shakespeare_head, out=tmp_path / "a", model_options=small,
             train_options={"max_epochs": many, "device": "cpu"}) as run:
        assert (run.trainer.config.optimizer, run.trainer.config.lr) == ("adamw", sizing.LEARNING_RATE["lstm"])
        assert run.trainer.config.weight_decay == sizing.WEIGHT_DECAY  # AdamW's decay goes with AdamW
        assert run.plan.sizing.optimizer == "adamw" and run.plan.sizing.adamw_for_passes
    with Run(shakespeare_head, out=tmp_path / "b", model_options=small,
             train_options={"max_epochs": few, "device": "cpu"}) as run:
        assert (run.trainer.config.optimizer, run.trainer.config.lr) == ("muon", sizing.MUON_LEARNING_RATE)
        assert run.trainer.config.weight_decay == sizing.MUON_WEIGHT_DECAY
    with Run(shakespeare_head, out=tmp_path / "c", model_options=small,
             train_options={"max_epochs": many, "device": "cpu", "optimizer": "muon"}) as run:
        assert run.trainer.config.optimizer == "muon"  # named: kept
    with Run(shakespeare_head, out=tmp_path / "d", model_options=small,
             train_options={"max_epochs": many, "device": "cpu", "lr": 0.02}) as run:
        assert (run.trainer.config.optimizer, run.trainer.config.lr) == ("adamw", 0.02)  # a named rate is kept
    with Run(shakespeare_head, out=tmp_path / "e", model_options=small,
             train_options={"max_epochs": few, "device": "cpu", "weight_decay": 0.0}) as run:
        assert run.trainer.config.weight_decay == 0.0  # a named decay is kept, 0 included


def test_choose_update_keeps_what_is_named_and_switches_muon_only_past_the_pass_limit():
    limit = sizing.MUON_MAX_PASSES
    muon = ("muon", sizing.MUON_LEARNING_RATE, sizing.MUON_WEIGHT_DECAY)
    assert sizing.choose_update("lstm") == muon  # before sizing: no passes yet
    assert sizing.choose_update("lstm", limit) == muon
    assert sizing.choose_update("lstm", limit * 1.01) == ("adamw", sizing.LEARNING_RATE["lstm"], sizing.WEIGHT_DECAY)
    assert sizing.choose_update("lstm", limit * 10, optimizer="muon") == muon
    assert sizing.choose_update("lstm", limit * 10, lr=0.03) == ("adamw", 0.03, sizing.WEIGHT_DECAY)
    assert sizing.choose_update("gru", 0.5) == ("adamw", sizing.LEARNING_RATE["gru"], sizing.WEIGHT_DECAY)
    assert sizing.choose_update("rnn", None, "muon") == muon
    # a named weight decay is kept whatever the update, 0 included
    assert sizing.choose_update("lstm", None, weight_decay=0.0) == ("muon", sizing.MUON_LEARNING_RATE, 0.0)
    assert sizing.choose_update("gru", None, weight_decay=0.3)[2] == 0.3
    assert sizing.MUON_WEIGHT_DECAY != sizing.WEIGHT_DECAY  # the update decides it


def test_a_burst_of_load_during_timing_does_not_make_a_width_look_slower(monkeypatch):
    # Warm-up 1 s, then timed steps of 10 s (another process woke up), 1 s and 1.5 s: the
    # rate is that of the fastest step, not of the mean (which would be 3.7x slower).
    ticks = iter([0.0, 1.0, 1.0, 11.0, 11.0, 12.0, 12.0, 13.5])
    monkeypatch.setattr(sizing, "_clock", lambda: next(ticks))
    rate = sizing.measure_throughput(lambda h: CharRNN(ModelConfig(vocab_size=20, hidden_size=h, num_layers=1,
                                                                   embedding_size=8)),
                                     batch_size=4, seq_len=16, vocab_size=20, device=torch.device("cpu"), steps=3)
    assert rate(16) == pytest.approx(4 * 16 / 1.0)


@pytest.mark.parametrize("limit,words", [("budget", "see enough text"), ("steps", "too few optimizer steps"),
                                         ("corpus", "too many weights"), ("ladder", "largest size")])
def test_the_sizing_line_says_why_the_model_stopped_growing(limit, words):
    from charrnn.cli.live import sizing_line

    line = sizing_line({"hidden_size": 256, "dropout": 0.1, "tokens_seen": 2e6, "train_tokens": 10**6, "limit": limit,
                        "epochs": 2.0, "auto": ["hidden_size", "dropout"], "timed": [[256, 10000.0]]})
    assert "256 units per layer" in line and words in line and "256 units 10,000 tokens/s" in line


def test_the_sizing_line_names_weight_drop_when_the_rule_chose_it():
    from charrnn.cli.live import sizing_line

    base = {"hidden_size": 256, "tokens_seen": 8e6, "train_tokens": 10**6, "limit": "budget", "epochs": 8.0,
            "auto": ["hidden_size", "dropout", "weight_drop"]}
    assert "256 units per layer and weight drop 0.2," in sizing_line({**base, "dropout": 0.0, "weight_drop": 0.2})
    line = sizing_line({**base, "dropout": 0.3, "weight_drop": 0.0})
    assert "and dropout 0.3," in line and "weight drop" not in line
    old = {**base, "auto": ["hidden_size", "dropout"], "dropout": 0.2}  # a record written before weight drop
    assert "and dropout 0.2," in sizing_line(old)
