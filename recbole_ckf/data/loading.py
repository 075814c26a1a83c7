"""Loading a data set: the atomic files checked, RecBole's dataset built, and its split into dataloaders."""

from recbole.data import create_dataset, data_preparation

from recbole_ckf.data.atomic import validate_atomic_files
from recbole_ckf.errors import CKFError


def load_data(config):
    """Check the atomic files, build RecBole's dataset and its split (train, valid, test dataloaders)."""
    validate_atomic_files(config)
    try:
        dataset = create_dataset(config)
    except ValueError as err:
        if "is empty" not in str(err):  # RecBole: "Some feat is empty, please check the filtering settings."
            raise
        dataset = None
    if dataset is None or dataset.inter_num == 0:
        filters = [f"{k}={config[k]}" for k in ("val_interval", "user_inter_num_interval", "item_inter_num_interval")
                   if config[k] not in (None, "[0,inf)", "[0, inf)", {})]
        raise CKFError(f"data set '{config['dataset']}' is empty after filtering: no interaction is left"
                       f"{' with ' + ', '.join(filters) if filters else ''} (check val_interval, "
                       f"user_inter_num_interval and item_inter_num_interval)")
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data
