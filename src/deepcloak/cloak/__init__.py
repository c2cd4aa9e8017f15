"""The cloak: layer L (:mod:`.taps`), feature scores (:mod:`.scores`), masks (:mod:`.mask`),
the fit (:mod:`.fit`) and TorchScript models (:mod:`.torchscript`).
"""
