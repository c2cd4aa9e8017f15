"""Data: image data sets by name (:mod:`.sets`), held in memory
(:mod:`.memory`) or read from image folders (:mod:`.folder`), batches sliced from in-memory sets
(:mod:`.loader`), and the file formats behind them: IDX and CIFAR-10 (:mod:`.formats`), CIFAR's
pickles read without running code (:mod:`.pickles`), image folders (:mod:`.images`). Every
reader bounds its memory by what the file can hold; see ``docs/security.md``.
"""
