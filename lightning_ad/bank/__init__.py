"""The memory bank: the features of the normal training images, in memory, on disk or sharded, and its files.

Every name of the former single module ``lightning_ad/bank.py`` is importable from here.
"""

from .disk import BankWriter, LevelFile
from .legacy import rename_legacy_keys
from .manifest import MANIFEST_FORMAT, decode_manifest, encode_manifest, file_sha256
from .memory_bank import BANK_DEVICES, BANK_DTYPES, BANK_SHARDINGS, BANK_STORAGES, MemoryBank
from .rows import check_finite
from .streaming import finish_stream

__all__ = ["MemoryBank", "BankWriter", "LevelFile", "BANK_DTYPES", "BANK_STORAGES", "BANK_SHARDINGS", "BANK_DEVICES",
           "check_finite", "MANIFEST_FORMAT", "file_sha256", "encode_manifest", "decode_manifest", "rename_legacy_keys",
           "finish_stream"]
