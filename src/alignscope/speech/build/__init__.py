"""Building (training) a speech LLM's projector: the build config (:mod:`.config`), the three-stage builder
(:mod:`.builder`), its data (:mod:`.data`), the training objectives (:mod:`.distill`), misheard-prompt training
data for the LLM (:mod:`.misheard`) and adversarial training of the projector (:mod:`.adversarial`)."""
