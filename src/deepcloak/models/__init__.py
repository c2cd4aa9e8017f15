"""Models: the zoo (:mod:`.zoo`), training (:mod:`.train`, :mod:`.recipes`) and safe
checkpoints (:mod:`.checkpoint`).
"""
