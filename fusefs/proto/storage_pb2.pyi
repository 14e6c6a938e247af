import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BidiReadObjectRequest(_message.Message):
    __slots__ = ("read_object_spec", "read_ranges")
    READ_OBJECT_SPEC_FIELD_NUMBER: _ClassVar[int]
    READ_RANGES_FIELD_NUMBER: _ClassVar[int]
    read_object_spec: BidiReadObjectSpec
    read_ranges: _containers.RepeatedCompositeFieldContainer[ReadRange]
    def __init__(self, read_object_spec: _Optional[_Union[BidiReadObjectSpec, _Mapping]] = ..., read_ranges: _Optional[_Iterable[_Union[ReadRange, _Mapping]]] = ...) -> None: ...

class BidiReadObjectSpec(_message.Message):
    __slots__ = ("bucket", "object", "generation", "if_generation_match", "if_generation_not_match", "read_handle", "routing_token")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_NOT_MATCH_FIELD_NUMBER: _ClassVar[int]
    READ_HANDLE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    object: str
    generation: int
    if_generation_match: int
    if_generation_not_match: int
    read_handle: BidiReadHandle
    routing_token: str
    def __init__(self, bucket: _Optional[str] = ..., object: _Optional[str] = ..., generation: _Optional[int] = ..., if_generation_match: _Optional[int] = ..., if_generation_not_match: _Optional[int] = ..., read_handle: _Optional[_Union[BidiReadHandle, _Mapping]] = ..., routing_token: _Optional[str] = ...) -> None: ...

class BidiReadObjectResponse(_message.Message):
    __slots__ = ("metadata", "object_data_ranges", "read_handle")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_DATA_RANGES_FIELD_NUMBER: _ClassVar[int]
    READ_HANDLE_FIELD_NUMBER: _ClassVar[int]
    metadata: Object
    object_data_ranges: _containers.RepeatedCompositeFieldContainer[ObjectRangeData]
    read_handle: BidiReadHandle
    def __init__(self, metadata: _Optional[_Union[Object, _Mapping]] = ..., object_data_ranges: _Optional[_Iterable[_Union[ObjectRangeData, _Mapping]]] = ..., read_handle: _Optional[_Union[BidiReadHandle, _Mapping]] = ...) -> None: ...

class BidiReadObjectRedirectedError(_message.Message):
    __slots__ = ("read_handle", "routing_token")
    READ_HANDLE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    read_handle: BidiReadHandle
    routing_token: str
    def __init__(self, read_handle: _Optional[_Union[BidiReadHandle, _Mapping]] = ..., routing_token: _Optional[str] = ...) -> None: ...

class BidiReadObjectError(_message.Message):
    __slots__ = ("read_range_errors",)
    READ_RANGE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    read_range_errors: _containers.RepeatedCompositeFieldContainer[ReadRangeError]
    def __init__(self, read_range_errors: _Optional[_Iterable[_Union[ReadRangeError, _Mapping]]] = ...) -> None: ...

class ReadRangeError(_message.Message):
    __slots__ = ("read_id", "status")
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    read_id: int
    status: _status_pb2.Status
    def __init__(self, read_id: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ReadRange(_message.Message):
    __slots__ = ("read_offset", "read_length", "read_id")
    READ_OFFSET_FIELD_NUMBER: _ClassVar[int]
    READ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    read_offset: int
    read_length: int
    read_id: int
    def __init__(self, read_offset: _Optional[int] = ..., read_length: _Optional[int] = ..., read_id: _Optional[int] = ...) -> None: ...

class ObjectRangeData(_message.Message):
    __slots__ = ("checksummed_data", "read_range", "range_end")
    CHECKSUMMED_DATA_FIELD_NUMBER: _ClassVar[int]
    READ_RANGE_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    checksummed_data: ChecksummedData
    read_range: ReadRange
    range_end: bool
    def __init__(self, checksummed_data: _Optional[_Union[ChecksummedData, _Mapping]] = ..., read_range: _Optional[_Union[ReadRange, _Mapping]] = ..., range_end: _Optional[bool] = ...) -> None: ...

class BidiReadHandle(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: bytes
    def __init__(self, handle: _Optional[bytes] = ...) -> None: ...

class ChecksummedData(_message.Message):
    __slots__ = ("content", "crc32c")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    crc32c: int
    def __init__(self, content: _Optional[bytes] = ..., crc32c: _Optional[int] = ...) -> None: ...

class ObjectChecksums(_message.Message):
    __slots__ = ("crc32c", "md5_hash")
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    MD5_HASH_FIELD_NUMBER: _ClassVar[int]
    crc32c: int
    md5_hash: bytes
    def __init__(self, crc32c: _Optional[int] = ..., md5_hash: _Optional[bytes] = ...) -> None: ...

class Object(_message.Message):
    __slots__ = ("name", "bucket", "generation", "metageneration", "storage_class", "size", "content_type", "create_time", "checksums", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    METAGENERATION_FIELD_NUMBER: _ClassVar[int]
    STORAGE_CLASS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    bucket: str
    generation: int
    metageneration: int
    storage_class: str
    size: int
    content_type: str
    create_time: _timestamp_pb2.Timestamp
    checksums: ObjectChecksums
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., bucket: _Optional[str] = ..., generation: _Optional[int] = ..., metageneration: _Optional[int] = ..., storage_class: _Optional[str] = ..., size: _Optional[int] = ..., content_type: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., checksums: _Optional[_Union[ObjectChecksums, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...
