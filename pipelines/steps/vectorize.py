"""Vectorize step: the training and validation trips as design matrices, plus the fitted vectorizer."""

from __future__ import annotations

from components.data.ingest import read_clean_trips
from components.features.design_matrix import save_design_matrix, save_vectorizer, vectorize_trips
from pipelines.steps.notes import log
from pipelines.steps.task_process import task_step


@task_step
def vectorize_step(
    *,
    train_trips_path: str,
    val_trips_path: str,
    train_matrix_path: str,
    val_matrix_path: str,
    vectorizer_path: str,
) -> dict[str, int]:

    vectorizer, train, validation = vectorize_trips(
        read_clean_trips(train_trips_path), read_clean_trips(val_trips_path)
    )
    save_design_matrix(train_matrix_path, train.X, train.y)
    save_design_matrix(val_matrix_path, validation.X, validation.y)
    save_vectorizer(vectorizer_path, vectorizer)
    shape = {"features": int(train.X.shape[1]), "train_rows": train.n_rows, "val_rows": validation.n_rows}
    log.info("vectorized: %s", shape)
    return shape
