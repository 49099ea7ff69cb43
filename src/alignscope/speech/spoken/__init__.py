"""Spoken data shared by builds, attacks and evaluations: espeak-ng synthesis (:mod:`.tts`) and spoken suites with
their manifests (:mod:`.suites`)."""
