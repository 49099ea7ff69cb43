"""Audio attacks on speech LLMs and the TDNF defence: PGD (:mod:`.pgd`), TDNF (:mod:`.defense`), the spoken
attack evaluation into a run directory (:mod:`.config`, :mod:`.clips`, :mod:`.evaluation`), the ``attack
audio-pgd`` / ``attack audio-transfer`` experiments (:mod:`.experiments`) and their report section
(:mod:`.report`)."""
