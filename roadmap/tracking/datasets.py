"""The data of a run as MLflow dataset inputs (mlflow.data): name, digest, source, schema and size."""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ..schema import DatasetRecord
from .store import retry_insert_race


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


def log_datasets(client: MlflowClient, run_id: str, records: Sequence[DatasetRecord]) -> None:
    """The records as the run's dataset inputs; two runs logging the same new dataset at once both insert it,
    so a unique-key error is retried (on the retry the dataset exists and only the inputs are added)."""
    inputs = [DatasetInput(ImageDataset(record)._to_mlflow_entity(),
                           tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=record.context)]) for record in records]
    retry_insert_race(lambda: client.log_inputs(run_id, datasets=inputs))


def _local_source(path: str) -> DatasetSource:
    """MLflow's source for a local path (LocalArtifactDatasetSource, made at import time by its registry)."""
    local = next(source for source in get_registered_sources() if source._get_source_type() == "local")
    return local(path)
