"""OpenRTB 2.6 bid requests -> impression contract rows: the one mapping, for ingest and scoring.

Training logs and bid-time requests are the same ``BidRequest`` objects, so both go through
``map_bid_request`` (one contract row per ``imp``). ``pythia.ingest`` quarantines the rows that
break the contract; ``score_openrtb`` scores every ``imp`` with whatever could be mapped (the
scorer's boundary handles missing and unknown values). ``contract_row_to_bid_request`` is the
inverse, used to emit the synthetic world as bid requests and to test the round trip.
``render_mapping()`` prints the mapping table from the extractors' own docstrings.

Modules: ``values`` (field readers), ``columns`` (one extractor per contract column),
``mapping`` (requests and log lines -> rows, scoring), ``inverse`` (rows -> requests).
"""
from pythia.scoring.openrtb.columns import (ADCOM_DEVICE_TYPES, AUDIO_AD_SIZE, DEFAULT_CATTAX,
                                            DEVICE_TYPE_OF_CODE, EXTRACTORS, NATIVE_MAIN_IMAGE,
                                            render_mapping)
from pythia.scoring.openrtb.inverse import bid_request_line, contract_row_to_bid_request
from pythia.scoring.openrtb.mapping import (LINE_REQUEST, LINE_TS, USER_EXT_COUNTER,
                                            MappedImpression, map_bid_request, map_request,
                                            parse_line, request_rows, score_openrtb,
                                            score_openrtb_lines, user_counter)
from pythia.scoring.openrtb.values import (BROWSER_RULES, UnmappableRequest, country_alpha2,
                                           parse_browser, parse_ts)

__all__ = ["ADCOM_DEVICE_TYPES", "AUDIO_AD_SIZE", "BROWSER_RULES", "DEFAULT_CATTAX",
           "DEVICE_TYPE_OF_CODE", "EXTRACTORS", "LINE_REQUEST", "LINE_TS", "NATIVE_MAIN_IMAGE",
           "MappedImpression", "UnmappableRequest", "bid_request_line",
           "contract_row_to_bid_request", "country_alpha2", "map_bid_request", "map_request",
           "parse_browser", "parse_line", "parse_ts", "render_mapping", "request_rows",
           "score_openrtb", "score_openrtb_lines", "USER_EXT_COUNTER", "user_counter"]
