"""Attacks: native FGSM/PGD (:mod:`.native`, the hot path) and ART's attacks (:mod:`.art`)."""
