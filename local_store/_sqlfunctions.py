"""The SQL functions read-only ``query`` lets an operator call.

An allowlist, not a denylist: SQLite builds differ in what they add (``fts3_tokenizer``
returns a native pointer and, with one argument more, takes one; extensions add
more), and a function this list does not name is refused by name. Listed: SQLite's
core scalar and aggregate functions, window functions, date and time functions,
JSON functions (and the ``->``/``->>`` operators, which are authorized as functions)
and math functions, as documented at https://sqlite.org/lang_corefunc.html and the
pages beside it, and ``packed_id`` (ours, pure: an id in the tables' form).
``load_extension``, ``fts3_tokenizer``, ``sqlite_compileoption_*``, ``sqlite_offset``
and anything else are not.
"""

from __future__ import annotations

__all__ = ["ALLOWED_FUNCTIONS"]

_CORE = """
abs changes char coalesce concat concat_ws format glob hex if ifnull iif instr
last_insert_rowid length like likelihood likely lower ltrim max min nullif
octet_length printf quote random randomblob replace round rtrim sign soundex
sqlite_version substr substring total_changes trim typeof unhex unicode unistr
unistr_quote unlikely upper zeroblob
"""
_AGGREGATE = """
avg count group_concat max min string_agg sum total median percentile percentile_cont
percentile_disc
"""
_WINDOW = """
row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
nth_value
"""
_DATE = """
date time datetime julianday unixepoch strftime timediff current_date current_time
current_timestamp
"""
_JSON = """
json jsonb json_array jsonb_array json_array_length json_error_position json_extract
jsonb_extract json_insert jsonb_insert json_object jsonb_object json_patch jsonb_patch
json_pretty json_remove jsonb_remove json_replace jsonb_replace json_set jsonb_set
json_type json_valid json_quote json_group_array jsonb_group_array json_group_object
jsonb_group_object json_each json_tree -> ->>
"""
_MATH = """
acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log
log10 log2 mod pi pow power radians sin sinh sqrt tan tanh trunc
"""

# Ours: an id as the tables keep it (local_store/_ids.py), to look one up.
_OURS = "packed_id"

ALLOWED_FUNCTIONS = frozenset(
    " ".join((_CORE, _AGGREGATE, _WINDOW, _DATE, _JSON, _MATH, _OURS)).split()
)
