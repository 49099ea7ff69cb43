"""Audio PGD steps per second on the embedded speech LLM: the Whisper encoder cropped to the clip's length
against padding every clip to 30 s (Whisper's default, what Hugging Face's encoder requires), same clips.

    python benchmarks/audio_pgd.py [--slm default] [--n 3] [--steps 5] [--threads 1]

The speech LLM is SmolLM2 + Whisper tiny.en + a projector: the built one (``alignscope speech build``) when
present, else a randomly initialised projector on ``--llm`` (labelled as such; the speed of a PGD step does not
depend on the projector's weights). Both sides run the same PGD (SNR budget 30 dB, no early stop) on the same
spoken harmful questions; a step is a forward and backward pass from the waveform through log-mel, encoder,
projector and LLM. Cropping shortens the encoder input (a 3 s clip: 300 mel frames instead of 3000) and the
LLM's sequence (about 19 audio embeddings instead of 188). The time of an attack includes its closing greedy
check (a few generated tokens), as a user pays it. Prints a table and the speed ratio.

Measured on this machine (2 shared cores, 1 thread, random projector, 3 clips of 4.4 s, 5 steps each):
1.10 s/step cropped against 4.49 s/step padded, 4.07x; with a built projector (another job on the other core):
0.79 s/step against 3.25 s/step, 4.13x.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from alignscope.data import load_suite
from alignscope.speech.attacks.pgd import AudioPGDConfig, audio_pgd
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.slm import SpeechLM
from alignscope.speech.spoken.tts import synthesize


def load(spec: str, llm: str) -> tuple[SpeechLM, str]:
    from alignscope.speech.model.loading import load_speech_model, random_speech_model

    try:
        return load_speech_model(spec), "built projector"
    except SpeechError as e:
        print(f"no built projector ({str(e)[:100]}...): using a randomly initialised one")
        return random_speech_model(llm), "RANDOM projector (untrained; speed only)"


def run(slm: SpeechLM, clips: list[torch.Tensor], steps: int) -> tuple[float, int, list[float]]:
    cfg = AudioPGDConfig(budget="snr", snr_db=30.0, steps=steps, early_stop=False)
    audio_pgd(slm, clips[0], None, "Sure, here is", replace(cfg, steps=1))  # warm-up
    t0 = time.perf_counter()
    total, first_losses = 0, []
    for c in clips:
        res = audio_pgd(slm, c, None, "Sure, here is", cfg)
        total += res.steps
        first_losses.append(res.losses[0])
    return time.perf_counter() - t0, total, first_losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slm", default="default", help="speech LLM spec (default: the embedded build)")
    ap.add_argument("--llm", default="smollm2", help="LLM of the random-projector fallback")
    ap.add_argument("--n", type=int, default=3, help="clips")
    ap.add_argument("--steps", type=int, default=5, help="PGD steps per clip")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    slm, kind = load(args.slm, args.llm)
    prompts = load_suite("harmful").split(0.5, 0)[1].take(args.n).prompts
    clips = [torch.from_numpy(synthesize(p, lead_silence=0.4)) for p in prompts]
    seconds = sum(c.numel() for c in clips) / 16000 / len(clips)
    rows = []
    for crop in (True, False):
        model = SpeechLM(slm.encoder, slm.projector, slm.llm, crop=crop, name=slm.name)
        n_audio = model.embed(clips[0]).audio_spans[0]
        t, steps, _ = run(model, clips, args.steps)
        rows.append((crop, t, steps, n_audio[1] - n_audio[0]))
    print(
        f"speech LLM {slm.name} ({kind}); {len(clips)} spoken harmful questions, mean {seconds:.1f} s; "
        f"PGD SNR 30 dB, {args.steps} steps each, no early stop; torch threads {torch.get_num_threads()}, "
        f"device {slm.device}"
    )
    print("| encoder input | audio embeddings (clip 1) | seconds | PGD steps | steps/s | s/step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for crop, t, steps, n_audio in rows:
        label = "cropped to the clip (alignscope)" if crop else "padded to 30 s (Whisper default)"
        print(f"| {label} | {n_audio} | {t:.1f} | {steps} | {steps / t:.3f} | {t / steps:.2f} |")
    (_, t_crop, s_crop, _), (_, t_pad, s_pad, _) = rows
    print(f"speed-up of cropping (steps/s): {(s_crop / t_crop) / (s_pad / t_pad):.2f}x")


if __name__ == "__main__":
    main()
