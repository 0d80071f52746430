"""jmoe data layer: the dataset format, real-format loaders, synthetic data, perturbations.

``jmoe.data.tfds_builders`` (TFDS builders for MOSI / MOSEI) is not imported here, to keep
``import jmoe.data`` free of the TFDS import cost; import it explicitly.
"""

from jmoe.data.format import (
  MODALITIES,
  SPLITS,
  Dataset,
  Split,
  describe,
  load_dataset,
  load_feature_npz,
  read_feature_table,
  save_dataset,
  validate,
)
from jmoe.data.bclstm import load_mosi_bclstm, load_mosi_standard
from jmoe.data.mmsa import load_mmsa_pickle, safe_load_pickle
from jmoe.data.sdk import load_mosi_labels, load_sdk_dataset, read_csd, standard_folds
from jmoe.data.synthetic import synthetic_mosei, synthetic_mosi, synthetic_mosi_with_truth
from jmoe.data.perturb import MISSING_COMBOS, blank_text, drop_modalities, gaussian_noise, salt_and_pepper

__all__ = [
  "MODALITIES",
  "SPLITS",
  "Dataset",
  "Split",
  "describe",
  "load_dataset",
  "load_feature_npz",
  "read_feature_table",
  "save_dataset",
  "validate",
  "load_mosi_bclstm",
  "load_mosi_standard",
  "load_mmsa_pickle",
  "safe_load_pickle",
  "load_mosi_labels",
  "load_sdk_dataset",
  "read_csd",
  "standard_folds",
  "synthetic_mosei",
  "synthetic_mosi",
  "synthetic_mosi_with_truth",
  "MISSING_COMBOS",
  "blank_text",
  "drop_modalities",
  "gaussian_noise",
  "salt_and_pepper",
]
