"""genscan: find AI-generated images in WebDataset corpora.

The library behind `jobs/`: detector (`pipeline.models`), data and training (`pipeline.data`,
`pipeline.train`, `pipeline.eval`), the scan (`pipeline.scan`), hygiene filtering (`pipeline.hygiene`).
Only `pipeline.engine` imports Ray.
"""

__version__ = "0.1.0"
