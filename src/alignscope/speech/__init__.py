"""Speech I/O for speech language models: Whisper features and encoder (read from CTranslate2 weights),
speech synthesis with espeak-ng, audio files and spoken versions of the text suites."""
