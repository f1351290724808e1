"""Images to model inputs and back: ``decode.py`` (PNG/JPEG bytes, guarded against decompression bombs),
``preprocess.py`` (a version's declared preprocessing applied to uploads), ``digit.py`` (the MNIST-style
digit fit, the same algorithm as ``service/static/preprocess.js``), ``heatmap.py`` (an attribution drawn
over its image)."""
