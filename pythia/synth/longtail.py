"""What the ``skewed`` world is made of: 40 countries, real subdivisions, a long device tail.

Catalogs only (no randomness), like ``catalog``. The countries span every default region of
``pythia.geo`` (MEA included); the countries with several time zones name real ISO-3166-2
subdivisions (each resolved to its IANA zone by ``pythia.geo``), so the multi-zone rule and
daylight saving are exercised. Device names are what bid logs carry: long-tailed, several
spellings of one brand, CJK/Cyrillic/Korean/Japanese and accented characters.
"""
from __future__ import annotations

from pythia.synth.catalog import DEVICE_CATALOG as CORE_DEVICES

# Country -> (share of users, youth). Youth > 0: a younger population than average.
COUNTRIES: dict[str, tuple[float, float]] = {
    # NA
    "US": (.16, 0.0), "CA": (.03, -0.1), "MX": (.05, 0.6),
    # LATAM
    "BR": (.07, 0.5), "AR": (.02, 0.3), "CO": (.02, 0.6), "CL": (.01, 0.1), "PE": (.01, 0.7),
    # EU
    "GB": (.05, -0.1), "DE": (.05, -0.5), "FR": (.04, -0.3), "ES": (.03, -0.3),
    "IT": (.03, -0.6), "PL": (.02, -0.2), "NL": (.015, -0.2), "SE": (.01, -0.1),
    "RO": (.01, -0.3), "PT": (.01, -0.5), "RU": (.04, -0.1), "UA": (.01, -0.2),
    # MEA
    "TR": (.03, 0.5), "SA": (.015, 0.8), "AE": (.01, 0.6), "EG": (.02, 0.9), "NG": (.02, 1.2),
    "ZA": (.015, 0.7), "KE": (.01, 1.1), "MA": (.01, 0.7), "IL": (.005, 0.4),
    # APAC
    "JP": (.04, -0.8), "KR": (.02, -0.4), "IN": (.06, 0.9), "ID": (.05, 0.8), "PH": (.02, 0.9),
    "VN": (.02, 0.6), "TH": (.015, 0.0), "MY": (.01, 0.5), "AU": (.02, 0.0), "NZ": (.005, 0.0),
    "PK": (.01, 1.1),
}

# Countries with several zones: their geo_region values, real ISO-3166-2 codes with a weight
# (population, millions), most populous first. Half-hour zones with daylight saving are in on
# purpose (CA-NL St John's, AU-SA Adelaide): their clocks change in the middle of a UTC hour.
SUBDIVISIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "US": (("US-CA", 39.0), ("US-TX", 30.0), ("US-FL", 22.0), ("US-NY", 20.0),
           ("US-IL", 12.5), ("US-GA", 11.0), ("US-WA", 7.8), ("US-AZ", 7.4), ("US-CO", 5.9),
           ("US-HI", 1.4), ("US-AK", 0.7)),
    "CA": (("CA-ON", 15.6), ("CA-QC", 8.9), ("CA-BC", 5.5), ("CA-AB", 4.6), ("CA-MB", 1.4),
           ("CA-SK", 1.2), ("CA-NS", 1.0), ("CA-NL", 0.5)),
    "MX": (("MX-MEX", 17.0), ("MX-CMX", 9.2), ("MX-JAL", 8.3), ("MX-NLE", 5.8),
           ("MX-BCN", 3.8), ("MX-CHH", 3.7), ("MX-SON", 2.9), ("MX-ROO", 1.9)),
    "BR": (("BR-SP", 46.0), ("BR-MG", 21.0), ("BR-RJ", 17.0), ("BR-BA", 14.0),
           ("BR-RS", 11.0), ("BR-PE", 9.6), ("BR-AM", 4.2), ("BR-MT", 3.7), ("BR-AC", 0.9)),
    "RU": (("RU-MOW", 13.0), ("RU-MOS", 8.5), ("RU-SPE", 5.6), ("RU-KDA", 5.8),
           ("RU-SVE", 4.3), ("RU-SAM", 3.1), ("RU-NVS", 2.8), ("RU-KYA", 2.8),
           ("RU-PRI", 1.8), ("RU-KGD", 1.0)),
    "AU": (("AU-NSW", 8.2), ("AU-VIC", 6.7), ("AU-QLD", 5.4), ("AU-WA", 2.8), ("AU-SA", 1.8),
           ("AU-TAS", 0.57), ("AU-ACT", 0.46), ("AU-NT", 0.25)),
    "ID": (("ID-JB", 49.0), ("ID-JI", 41.0), ("ID-JT", 37.0), ("ID-SU", 15.0),
           ("ID-JK", 10.6), ("ID-SN", 9.2), ("ID-KB", 5.4), ("ID-BA", 4.3), ("ID-PA", 4.3)),
}

# Share of users by device type (the contract's order: mobile, tablet, desktop, ctv).
DEVICE_TYPE_SHARE = (0.88, 0.08, 0.03, 0.01)


def _series(prefix: str, names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}" for n in names.split("|"))


def _codes(pattern: str, n: int, first: int, step: int) -> tuple[str, ...]:
    """``n`` model codes (what many bid logs carry instead of the marketing name)."""
    return tuple(pattern.format(first + step * i) for i in range(n))


# (device type, make, OS, models); makes listed by popularity (a Zipf over this order).
# One phone may appear under two spellings (marketing name and model code), as in real logs.
_MOBILE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Samsung", "Android", _series("Samsung Galaxy ", "A12|A13|A14|A15|A03s|A04e|A02s|A10|A20s|"
                                   "A21s|A22|A23 5G|A32|A33 5G|A34 5G|A51|A52|A53 5G|A54 5G|M12|"
                                   "M21|M31|M33|S10|S20 FE|S21|S22 Ultra|S23|S24+|Note10+|"
                                   "Z Flip5|J7 Prime|J2 Core|Xcover 5")
     + ("갤럭시 S23", "갤럭시 A34") + _codes("SM-A{}F", 40, 105, 10)
     + _codes("SM-G{}B", 12, 960, 5)),
    ("Apple", "iOS", _series("iPhone ", "11|12|12 mini|13|13 Pro|14|14 Pro Max|15|15 Pro|"
                             "SE (2nd generation)|XR|X|8 Plus|7")),
    ("Xiaomi", "Android", ("Redmi 9A", "Redmi 9C", "Redmi 10", "Redmi 12C", "Redmi Note 8",
                           "Redmi Note 9 Pro", "Redmi Note 10S", "Redmi Note 11",
                           "Redmi Note 12", "Redmi Note 13 Pro+", "Xiaomi 红米 Note 11",
                           "Xiaomi 13T", "Xiaomi 12 Lite", "POCO X3 NFC", "POCO X5 Pro",
                           "POCO M4 Pro", "Mi 11 Lite", "Mi A3")
     + _codes("M2{}G", 30, 101007, 137) + _codes("2201117{}G", 10, 11, 7)),
    ("OPPO", "Android", _series("OPPO ", "A15|A16|A17|A54|A57|A78|A96|Reno7|Reno8 T|"
                                "Reno10 Pro|Find X5|F21 Pro|A5s") + _codes("CPH{}", 35, 2015, 13)),
    ("vivo", "Android", _series("vivo ", "Y11|Y12s|Y15s|Y16|Y20|Y21|Y22|Y36|V21|V25|V27e|"
                                "T1 5G|X80|iQOO Z7") + _codes("V{}", 25, 2027, 11)),
    ("HUAWEI", "Android", ("HUAWEI P30 lite", "HUAWEI P40", "HUAWEI Y9 Prime 2019",
                           "HUAWEI nova 9", "HUAWEI nova Y70", "HUAWEI Mate 20 Pro",
                           "HUAWEI Y6p") + _codes("HUAWEI MAR-LX{}", 3, 1, 1)
     + _codes("ANE-LX{}", 3, 1, 1) + _codes("JNY-LX{}", 2, 1, 1)),
    ("realme", "Android", _series("realme ", "C11|C21Y|C25s|C35|C53|8|9i|10|11 Pro+|narzo 50A")
     + _codes("RMX{}", 25, 3085, 17)),
    ("Motorola", "Android", ("moto g(8) power", "moto g(9) play", "moto g(10)", "moto g22",
                             "moto g31", "moto g52", "moto g54 5G", "moto e(7) plus", "moto e13",
                             "motorola edge 30", "motorola one fusion+")),
    ("TECNO", "Android", _series("TECNO ", "Spark 7|Spark 8C|Spark 10 Pro|Camon 18|Camon 20|"
                                 "Pop 5|Pova 4") + _codes("TECNO KG{}", 15, 5, 1)),
    ("Infinix", "Android", _series("Infinix ", "Hot 10|Hot 11 Play|Hot 12|Hot 30|Smart 6|"
                                   "Smart 7|Note 12|Zero 30") + _codes("Infinix X{}", 15, 657, 7)),
    ("HONOR", "Android", ("HONOR X7", "HONOR X8", "HONOR 90 Lite", "HONOR Magic5 Lite",
                          "HONOR 8X")),
    ("Google", "Android", _series("Pixel ", "6a|7|7a|8|8 Pro|4a")),
    ("Nokia", "Android", _series("Nokia ", "G10|G21|C21 Plus|C32|5.4|X20")),
    ("小米", "Android", ("红米 K60", "红米 Note 12 Turbo", "小米 13")),
    ("itel", "Android", _series("itel ", "A56|A70|P40|Vision 3")),
    ("OnePlus", "Android", ("OnePlus Nord CE 3 Lite", "OnePlus Nord N20", "OnePlus 9 Pro",
                            "OnePlus 11")),
    ("ZTE", "Android", ("ZTE Blade A51", "ZTE Blade A71", "ZTE Blade V40")),
    ("Sony", "Android", ("Xperia 10 Ⅲ", "Xperia 10 Ⅳ", "Xperia 1 Ⅴ", "Xperia 5 Ⅱ")),
    ("Alcatel", "Android", ("Alcatel 1SE", "Alcatel 1B", "Alcatel 3L", "Alcatel 1 Édition")),
    ("LG", "Android", _series("LG ", "K42|K52|Velvet|Q60")),
    ("华为", "Android", ("华为 畅享 20", "华为 Mate 60 Pro", "华为 nova 11")),
    ("Lenovo", "Android", ("Lenovo K12 Note", "Lenovo K14 Plus")),
    ("Positivo", "Android", ("Positivo Twist 4", "Positivo Twist 5", "Positivo Twist 4 Pro",
                             "Positivo Twist Ação")),
    ("Wiko", "Android", ("Wiko Y62", "Wiko Lenny 5", "Wiko Power U30", "Wiko Sunny 5 Élite")),
    ("SHARP", "Android", ("AQUOS sense7", "シャープ AQUOS wish3")),
    ("荣耀", "Android", ("荣耀 X40", "荣耀 Play7T")),
    ("Multilaser", "Android", ("Multilaser G Max 2", "Multilaser E Lite 2")),
    ("Condor", "Android", ("Condor Allure M3 Lite", "Condor Plume L8")),
    ("KYOCERA", "Android", ("京セラ かんたんスマホ3", "らくらくスマートフォン F-52B")),
    ("Vsmart", "Android", ("Vsmart Joy 4", "Vsmart Live 4")),
    ("BQ", "Android", ("BQ-6631G Surf", "BQ-5765L Clever")),
    ("Vertex", "Android", ("Vertex Impress Луч", "Vertex Impress Тайга")),
    ("Symphony", "Android", ("Symphony Z60",)),
    ("Walton", "Android", ("Walton Primo R8",)),
    ("Lava", "Android", ("Lava Blaze 2",)),
    ("Micromax", "Android", ("Micromax IN 2b",)),
    ("Meizu", "Android", ("魅族 20", "Meizu 18s Pro")),
    ("Crosscall", "Android", ("Crosscall Core-X5", "Crosscall Action-X5 Édition Pro")),
)

# Tablets, desktops and TVs: a few long-tail tablets plus the core catalog's other devices.
_TABLETS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("tablet", "Apple", "iOS", ("iPad (9th generation)", "iPad Air (5th generation)",
                                "iPad Pro 11")),
    ("tablet", "Samsung", "Android", ("Samsung Galaxy Tab A8", "Samsung Galaxy Tab A7 Lite",
                                      "Samsung Galaxy Tab S6 Lite")),
    ("tablet", "Lenovo", "Android", ("Lenovo Tab M10", "Lenovo Tab P11")),
    ("tablet", "Amazon", "Fire OS", ("Fire HD 8", "Fire HD 10")),
    ("tablet", "HUAWEI", "Android", ("HUAWEI MatePad T10s",)),
)

DEVICE_CATALOG: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    tuple(("mobile", make, os_name, models) for make, os_name, models in _MOBILE) + _TABLETS
    + tuple(entry for entry in CORE_DEVICES if entry[0] in ("desktop", "ctv")))
