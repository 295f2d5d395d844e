"""The data of a run as MLflow dataset inputs (mlflow.data): name, digest, source, schema and size."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ..schema import DatasetRecord


class ImageDataset(MetaDataset):
    """A MetaDataset that also states its size (the UI shows the profile next to the schema)."""

    def __init__(self, record: DatasetRecord):
        channels, height, width = record.image_shape
        schema = Schema([TensorSpec(np.dtype(np.float32), (-1, channels, height, width), "image"),
                         TensorSpec(np.dtype(np.int64), (-1,), "label")])
        if record.source_kind == "code":
            source = CodeDatasetSource({"generator": record.source, **record.generator})
        else:
            source = _local_source(record.source)
        super().__init__(source, name=record.name, digest=record.digest, schema=schema)
        self._profile = {"num_images": record.num_images, "num_classes": record.num_classes}

    @property
    def profile(self) -> dict[str, int]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


# Two runs that log the same new dataset at once both insert it, and the second insert breaks a unique
# constraint (MLflow 3.17 checks, then inserts); on a retry the dataset exists and only the inputs are added.
DATASET_RETRIES = 5


def log_datasets(client: MlflowClient, run_id: str, records: Sequence[DatasetRecord]) -> None:
    inputs = [DatasetInput(ImageDataset(record)._to_mlflow_entity(),
                           tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=record.context)]) for record in records]
    for attempt in range(DATASET_RETRIES):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if "UNIQUE constraint" not in str(error) and "IntegrityError" not in str(error) \
                    or attempt == DATASET_RETRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _local_source(path: str) -> DatasetSource:
    """MLflow's source for a local path (LocalArtifactDatasetSource, made at import time by its registry)."""
    local = next(source for source in get_registered_sources() if source._get_source_type() == "local")
    return local(path)
