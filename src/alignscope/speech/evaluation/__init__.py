"""Measuring a speech LLM: held-out refusal, helpfulness and agreement with its LLM (:mod:`.held_out`, the
``speech evaluate`` experiment), helpfulness measures (:mod:`.helpfulness`) and the SpeechGuard reproduction
(:mod:`.speechguard`)."""
