"""Data: image data sets by name (:mod:`.sets`) and the file formats behind them
(:mod:`.formats`).
"""
