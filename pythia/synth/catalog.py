"""What a synthetic world is made of: classes, country shares, interests, devices, ad slots.

Catalogs only (no randomness); ``world.build_params`` draws the world's tables over them. Value
sets the contract closes (device type, inventory type, ad format) are taken from the contract.
These are the ``core`` catalogs (the tiny/default/large worlds); ``longtail`` holds the skewed
world's.
"""
from __future__ import annotations

import numpy as np

from pythia.config import DEFAULT_AGE_EDGES
from pythia.contract import IMPRESSIONS
from pythia.features import age_bucket_labels, age_gender_labels

N_AGE = len(DEFAULT_AGE_EDGES)
N_CLASS = 2 * N_AGE  # AgeGender, gender-major (features.age_gender_labels order)
CLASS_LABELS = age_gender_labels()
AGE_LABELS = age_bucket_labels()
MAX_SYNTH_AGE = 90  # ages in the open 65+ bucket are drawn in [65, MAX_SYNTH_AGE]
# User shares of the age buckets before each country's tilt (``WorldConfig.age_shares``).
AGE_SHARES = (.16, .22, .20, .17, .13, .12)

# The core worlds' 12 countries (4 regions of pythia.geo) and their share of users; the order
# is an axis of the world's tables.
COUNTRY_SHARE = {"US": .22, "CA": .05, "MX": .07, "GB": .08, "DE": .08, "FR": .07, "ES": .05,
                 "JP": .08, "AU": .04, "IN": .12, "BR": .09, "AR": .05}
# Positive = younger population than average (tilts the country's age prior).
COUNTRY_YOUTH = {"US": 0.0, "CA": -0.1, "MX": 0.6, "GB": -0.1, "DE": -0.5, "FR": -0.3,
                 "ES": -0.3, "JP": -0.8, "AU": 0.0, "IN": 0.9, "BR": 0.5, "AR": 0.3}

INTERESTS = ("news", "sports", "gaming", "fashion", "parenting", "finance", "tech", "travel",
             "food", "music", "health", "autos", "beauty", "science", "home", "pets")
CATEGORY_OF_INTEREST = {
    "news": "IAB12 News", "sports": "IAB17 Sports", "gaming": "IAB9-30 Video & Computer Games",
    "fashion": "IAB18 Style & Fashion", "parenting": "IAB6 Family & Parenting",
    "finance": "IAB13 Personal Finance", "tech": "IAB19 Technology & Computing",
    "travel": "IAB20 Travel", "food": "IAB8 Food & Drink", "music": "IAB1-6 Music",
    "health": "IAB7 Health & Fitness", "autos": "IAB2 Automotive", "beauty": "IAB18-1 Beauty",
    "science": "IAB15 Science", "home": "IAB10 Home & Garden", "pets": "IAB16 Pets"}

# Closed value sets are the contract's allowed values, in the contract's order: that order is
# an axis of the world's tables, so reordering the contract changes every generated world.
DEVICE_TYPES = IMPRESSIONS.column("device_type").allowed
DEVICE_TYPE_SHARE = (0.6, 0.1, 0.2, 0.1)
DEVICE_CATALOG: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("mobile", "Apple", "iOS", ("iPhone 12", "iPhone 13", "iPhone 14", "iPhone 15", "iPhone 16",
                                "iPhone SE")),
    ("mobile", "Samsung", "Android", ("Galaxy S22", "Galaxy S23", "Galaxy S24", "Galaxy A14",
                                      "Galaxy A54")),
    ("mobile", "Google", "Android", ("Pixel 7", "Pixel 8", "Pixel 9")),
    ("mobile", "Xiaomi", "Android", ("Redmi Note 12", "Redmi 13C", "Xiaomi 14")),
    ("mobile", "Motorola", "Android", ("Moto G54", "Moto E13")),
    ("mobile", "Oppo", "Android", ("Oppo A78", "Reno 10")),
    ("tablet", "Apple", "iOS", ("iPad", "iPad Air", "iPad Pro")),
    ("tablet", "Samsung", "Android", ("Galaxy Tab S9", "Galaxy Tab A8")),
    ("tablet", "Amazon", "Fire OS", ("Fire HD 8", "Fire HD 10")),
    ("desktop", "Apple", "macOS", ("MacBook Air", "MacBook Pro", "iMac")),
    ("desktop", "Dell", "Windows", ("XPS 13", "Inspiron 15")),
    ("desktop", "HP", "Windows", ("Pavilion", "EliteBook")),
    ("desktop", "Lenovo", "Windows", ("ThinkPad T14", "IdeaPad 5")),
    ("desktop", "Acer", "ChromeOS", ("Chromebook 314",)),
    ("desktop", "Generic", "Linux", ("Linux PC",)),
    ("ctv", "Roku", "Roku OS", ("Roku Express", "Roku Ultra")),
    ("ctv", "Samsung", "Tizen", ("Samsung Smart TV",)),
    ("ctv", "LG", "webOS", ("LG OLED TV",)),
    ("ctv", "Amazon", "Fire OS", ("Fire TV Stick",)),
)
OS_VERSIONS = {  # oldest first: young users lean to newer versions
    "iOS": ("15", "16", "17", "18"), "Android": ("10", "11", "12", "13", "14", "15"),
    "Windows": ("10", "11"), "macOS": ("12", "13", "14", "15"), "ChromeOS": ("120", "124", "128"),
    "Linux": ("5.15", "6.1", "6.8"), "Roku OS": ("11", "12", "13"), "Tizen": ("6.5", "7.0", "8.0"),
    "webOS": ("6", "22", "23"), "Fire OS": ("7", "8")}
BROWSERS_OF_OS = {  # OSes absent here (TV platforms) have no browser
    "iOS": ("Safari", "Chrome"), "Android": ("Chrome", "Samsung Internet", "Firefox", "Opera"),
    "Windows": ("Chrome", "Edge", "Firefox", "Opera"), "macOS": ("Safari", "Chrome", "Firefox"),
    "ChromeOS": ("Chrome",), "Linux": ("Chrome", "Firefox"), "Fire OS": ("Silk",)}
INVENTORY_TYPES = IMPRESSIONS.column("inventory_type").allowed
# How much each inventory type is used on each device type (ctv is nearly all apps).
INVENTORY_FACTOR = np.array([[1.0, 1.0, 1.6, 0.02],   # site × (mobile, tablet, desktop, ctv)
                             [1.2, 1.0, 0.1, 1.5]])   # app
AD_FORMATS = IMPRESSIONS.column("ad_format").allowed
FORMAT_BASE = np.array([[.50, .20, .22, .08],   # mobile
                        [.45, .30, .22, .03],   # tablet
                        [.55, .25, .20, .00],   # desktop: no audio
                        [.00, .97, .00, .03]])  # ctv
AD_SIZES_OF_FORMAT = {"banner": ("300x250", "728x90", "320x50", "160x600", "300x600"),
                      "video": ("640x360", "1280x720", "1920x1080"),
                      "native": ("1200x627", "627x627"), "audio": ("0x0",)}
SUPPLY_VENDORS = ("openx", "pubmatic", "magnite", "index", "xandr", "sovrn", "triplelift",
                  "gumgum")
APP_SHARE = 0.55  # share of inventory items that are apps
GLOBAL_SITE_SHARE = 0.3  # sites popular everywhere; the rest are local to one country
