"""The generated protobuf code is what scripts/gen-proto makes from storage.proto."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_proto(tmp_path):
    subprocess.run(
        [str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        cwd=REPO,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in ("storage_pb2.py", "storage_pb2.pyi", "storage_pb2_grpc.py"):
        fresh = (tmp_path / "fusefs" / "proto" / name).read_text()
        committed = (REPO / "fusefs" / "proto" / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-proto"


def test_wire_names_and_field_numbers_are_the_public_apis():
    from fusefs.proto import storage_pb2 as pb

    assert pb.DESCRIPTOR.package == "google.storage.v2"
    method = pb.DESCRIPTOR.services_by_name["Storage"].methods_by_name["BidiReadObject"]
    assert method.client_streaming and method.server_streaming
    numbers = {
        "BidiReadObjectRequest": {"read_object_spec": 1, "read_ranges": 8},
        "BidiReadObjectSpec": {
            "bucket": 1,
            "object": 2,
            "generation": 3,
            "read_handle": 13,
            "routing_token": 14,
        },
        "ReadRange": {"read_offset": 1, "read_length": 2, "read_id": 3},
        "BidiReadObjectResponse": {"object_data_ranges": 6, "metadata": 4, "read_handle": 7},
        "ObjectRangeData": {"checksummed_data": 1, "read_range": 2, "range_end": 3},
        "ChecksummedData": {"content": 1, "crc32c": 2},
        "Object": {"name": 1, "bucket": 2, "generation": 3, "size": 6},
        "BidiReadHandle": {"handle": 1},
        "BidiReadObjectError": {"read_range_errors": 1},
        "ReadRangeError": {"read_id": 1, "status": 2},
        "BidiReadObjectRedirectedError": {"read_handle": 1, "routing_token": 2},
    }
    for message, fields in numbers.items():
        desc = pb.DESCRIPTOR.message_types_by_name[message]
        for field, number in fields.items():
            assert desc.fields_by_name[field].number == number, (message, field)
    crc = pb.DESCRIPTOR.message_types_by_name["ChecksummedData"].fields_by_name["crc32c"]
    assert crc.type == crc.TYPE_FIXED32


def test_hand_encoded_data_response_decodes_as_the_generated_code_does():
    from fusefs.proto import storage_pb2 as pb
    from fusefs.server.wire import data_response

    for content, crc, offset, read_id, last in [
        (b"", 0, 0, 0, False),
        (b"x" * 300, 0xFFFFFFFF, 5, 1, True),
        (bytes(range(256)) * 8192, 0x12345678, (1 << 40) + 3, (1 << 62), False),
    ]:
        raw = data_response(content, crc, offset, read_id, last)
        expected = pb.BidiReadObjectResponse(
            object_data_ranges=[
                pb.ObjectRangeData(
                    checksummed_data=pb.ChecksummedData(content=content, crc32c=crc),
                    read_range=pb.ReadRange(
                        read_offset=offset, read_length=len(content), read_id=read_id
                    ),
                    range_end=last,
                )
            ]
        )
        assert pb.BidiReadObjectResponse.FromString(raw) == expected
