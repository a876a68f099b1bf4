"""The bottom floor: the plain types every layer above shares (the forward batch, prefix groups, the
attention backend interface) and the host->device copy helper.

NOTE: nothing here imports anything of radixserve; cache, models, runtime and sampling build on it.
"""
