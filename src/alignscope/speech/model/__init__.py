"""The speech LLM itself: Whisper features and encoder (read from CTranslate2 weights), audio I/O, the projector,
:class:`~alignscope.speech.model.slm.SpeechLM`, and loading a speech LLM by spec or from a build
(:mod:`~alignscope.speech.model.loading`)."""
