"""PatternNet (Zhou et al., 2018): 38 classes × 800 images, 256×256 px — the PatternCom archive.

Layout expected under the root: ``images/<class_dir>/<file>.jpg`` (as in the official zip, whose
top folder is ``PatternNet/images``). The data cannot be fetched automatically (it is hosted on
Google Drive): download ``PatternNet.zip`` from https://sites.google.com/view/zhouwx/dataset, unzip it
under ``$RSCIR_DATA`` and pass ``$RSCIR_DATA/PatternNet``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, DatasetNotFoundError
from ..imagesets import IMAGE_EXTENSIONS

#: class folder → the class prefix of its file names (``wastewater_treatment_plant`` → ``wastewaterplant``).
PATTERNNET_CLASSES: dict[str, str] = {
    "airplane": "airplane", "baseball_field": "baseballfield", "basketball_court": "basketballcourt",
    "beach": "beach", "bridge": "bridge", "cemetery": "cemetery", "chaparral": "chaparral",
    "christmas_tree_farm": "christmastreefarm", "closed_road": "closedroad", "coastal_mansion": "coastalmansion",
    "crosswalk": "crosswalk", "dense_residential": "denseresidential", "ferry_terminal": "ferryterminal",
    "football_field": "footballfield", "forest": "forest", "freeway": "freeway", "golf_course": "golfcourse",
    "harbor": "harbor", "intersection": "intersection", "mobile_home_park": "mobilehomepark",
    "nursing_home": "nursinghome", "oil_gas_field": "oilgasfield", "oil_well": "oilwell", "overpass": "overpass",
    "parking_lot": "parkinglot", "parking_space": "parkingspace", "railway": "railway", "river": "river",
    "runway": "runway", "runway_marking": "runwaymarking", "shipping_yard": "shippingyard",
    "solar_panel": "solarpanel", "sparse_residential": "sparseresidential", "storage_tank": "storagetank",
    "swimming_pool": "swimmingpool", "tennis_court": "tenniscourt", "transformer_station": "transformerstation",
    "wastewater_treatment_plant": "wastewaterplant",
}


class PatternNet:
    """PatternNet images as (relative path, class folder) items.

    ``root`` holds ``images/<class_dir>/*.jpg`` (or the class folders directly).
    """

    title, url, downloadable = "PatternNet images", "https://sites.google.com/view/zhouwx/dataset", False

    def __init__(self, root):
        root = Path(root).expanduser()
        self.root = root / "images" if (root / "images").is_dir() else root
        self.manual = (f"it is hosted on Google Drive: download PatternNet.zip from {self.url}, unzip it and pass "
                       "the PatternNet folder")
        if not self.root.is_dir() or not any((self.root / c).is_dir() for c in PATTERNNET_CLASSES):
            raise DatasetNotFoundError(self, "images/<class>/*.jpg")
        self.image_paths, self.labels = [], []
        for cls in sorted(PATTERNNET_CLASSES):
            folder = self.root / cls
            if not folder.is_dir():
                raise DataError(f"PatternNet class folder {folder} is missing; re-extract PatternNet.zip")
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.image_paths.append(f"{cls}/{f.name}")
                    self.labels.append(cls)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __iter__(self):
        return iter(zip(self.image_paths, self.labels))
