"""The HPACK coders that remember results (`corral.worker.http2.hpack_cache`) stay in step with hpack's plain ones:
what they reuse is exactly what coding afresh would give, through table changes, evictions and resizes."""

from __future__ import annotations

from hpack import Decoder, Encoder

from corral.worker.http2.hpack_cache import CachingDecoder, CachingEncoder

STATUS = [(b":status", b"200"), (b"server", b"corral"), (b"content-type", b"text/plain")]


def heads() -> list[list[tuple[bytes, bytes]]]:
    """Responses as a connection sends them: repeated heads, a date that changes, unique values that evict."""
    lists = []
    for second in range(6):
        date = (b"date", b"Sun, 06 Dec 2026 09:00:%02d GMT" % second)
        for length in (5, 5, 12, 5):
            lists.append([*STATUS, date, (b"content-length", b"%d" % length)])
        lists.append([*STATUS, date, (b"x-request-id", b"%04d" % second * 300)])  # 1.2 KB each: evictions
    return lists


def length_last(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """What the caching encoder sends: the same fields, `content-length` moved to the end."""
    return [f for f in headers if f[0] != b"content-length"] + [f for f in headers if f[0] == b"content-length"]


def test_the_caching_encoder_gives_blocks_a_plain_decoder_reads_as_sent() -> None:
    encoder, decoder = CachingEncoder(), Decoder()
    reused = 0
    for number, headers in enumerate(heads()):
        if number == 20:
            encoder.header_table_size = 1024  # a resize in the middle: its update must lead the next block
        before = len(encoder.cache)
        block = encoder.encode(headers)
        reused += len(encoder.cache) == before and bool(encoder.cache)
        assert decoder.decode(block, raw=True) == length_last(headers)
    assert reused  # the repeated heads were reused, not encoded again


def test_a_content_length_that_changes_does_not_stop_the_head_being_reused() -> None:
    encoder, decoder = CachingEncoder(), Decoder()
    for length in range(200):
        headers = [(b":status", b"200"), (b"content-length", b"%d" % length), (b"content-type", b"application/json")]
        assert decoder.decode(encoder.encode(headers), raw=True) == length_last(headers)
    assert encoder.table.version == 1 and len(encoder.cache) == 1  # content-type entered the table once


def test_the_caching_decoder_reads_what_a_plain_encoder_sends() -> None:
    """Every block, by the caching decoder and by a plain one: the same fields, whether decoded or remembered (a
    repeated head is the same block once its fields are in the table)."""
    encoder, decoder, plain = Encoder(), CachingDecoder(65536), Decoder()
    reused = 0
    for headers in heads():
        for block in (encoder.encode(headers), encoder.encode(headers)):
            remembered = (block, True, 65536, 4096) in decoder.cache
            assert decoder.decode(block, raw=True) == plain.decode(block, raw=True) == headers
            reused += remembered
    assert reused


def test_a_remembered_block_is_not_reused_once_the_table_changed() -> None:
    """The same bytes mean other fields once the table has moved: an indexed field's number shifts."""
    encoder, decoder = Encoder(), CachingDecoder(65536)
    decoder.decode(encoder.encode([(b"x-a", b"1")]), raw=True)
    repeat = encoder.encode([(b"x-a", b"1")])  # index 62: the newest dynamic entry
    assert decoder.decode(repeat, raw=True) == [(b"x-a", b"1")]
    decoder.decode(encoder.encode([(b"x-b", b"2")]), raw=True)  # 62 is now x-b
    assert decoder.decode(repeat, raw=True) == [(b"x-b", b"2")]
