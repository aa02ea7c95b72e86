"""`python -m bondexp.predict`: price new bonds with a finished run's verified models, batch by batch, and rank them.

- :mod:`bondexp.predict.runfolder`: verify a run folder (sha256, library versions, the models asked for) and load it.
- :mod:`bondexp.predict.batches`: load and validate the new file as a run would; features and predictions per batch.
- :mod:`bondexp.predict.summary`: predictions.md.
- :mod:`bondexp.predict.app`: the schema and :func:`~bondexp.predict.app.predict`, which tests call.
"""
