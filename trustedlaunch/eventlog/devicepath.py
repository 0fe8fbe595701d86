"""Text form of UEFI device paths (UEFI spec 2.10, section 10.6 "Device Path Text Representation").

virt-firmware's decoder drops the node details a verifier shows (partition GUIDs, offsets, addresses),
so the nodes are formatted here; a malformed node ends the text with "Malformed(...)" instead of failing.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid

_NODE_HEADER = struct.Struct("<BBH")
_END_TYPE = 0x7F
_END_INSTANCE = 0x01
_PNP_EISA_IDS = {0x0A0341D0: "PciRoot", 0x0A0841D0: "PcieRoot"}
_MEMORY_TYPES = {0: "EfiReservedMemoryType", 3: "EfiBootServicesCode", 11: "EfiMemoryMappedIO"}


def _guid(data: bytes, offset: int = 0) -> str:
    return str(uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))).upper()


def _utf16(data: bytes) -> str:
    return bytes(data).decode("utf-16-le", errors="replace").split("\x00", 1)[0]


def _hardware(subtype: int, body: bytes) -> str | None:
    if subtype == 0x01 and len(body) >= 2:
        function, device = body[0], body[1]
        return f"Pci(0x{device:X},0x{function:X})"
    if subtype == 0x03 and len(body) >= 20:
        memory_type, start, end = struct.unpack_from("<IQQ", body)
        return f"MemoryMapped({_MEMORY_TYPES.get(memory_type, hex(memory_type))},0x{start:X},0x{end:X})"
    if subtype == 0x04 and len(body) >= 16:
        return f"VenHw({_guid(body)}{',' + body[16:].hex().upper() if len(body) > 16 else ''})"
    return None


def _acpi(subtype: int, body: bytes) -> str | None:
    if subtype == 0x01 and len(body) >= 8:
        hid, uid = struct.unpack_from("<II", body)
        name = _PNP_EISA_IDS.get(hid)
        if name is not None:
            return f"{name}(0x{uid:X})"
        return f"Acpi(PNP{hid >> 16:04X},0x{uid:X})"
    return None


def _messaging(subtype: int, body: bytes) -> str | None:
    if subtype == 0x0B and len(body) >= 33:
        interface = body[32]
        length = 6 if interface in (0, 1) else 32
        return f"MAC({body[:length].hex().upper()},0x{interface:X})"
    if subtype == 0x0C and len(body) >= 12:
        local, remote = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        protocol = struct.unpack_from("<H", body, 12)[0] if len(body) >= 14 else 0
        dhcp = "DHCP" if len(body) >= 15 and body[14] == 0 else "Static"
        return f"IPv4({remote},{ {6: 'TCP', 17: 'UDP'}.get(protocol, protocol) },{dhcp},{local})"
    if subtype == 0x0D and len(body) >= 32:
        return f"IPv6({ipaddress.IPv6Address(body[16:32])},{ipaddress.IPv6Address(body[0:16])})"
    if subtype == 0x18:
        return f"Uri({bytes(body).decode('utf-8', errors='replace')})"
    if subtype == 0x12 and len(body) >= 6:
        port, multiplier, lun = struct.unpack_from("<HHH", body)
        return f"Sata(0x{port:X},0x{multiplier:X},0x{lun:X})"
    if subtype == 0x17 and len(body) >= 12:
        namespace = struct.unpack_from("<I", body)[0]
        return f"NVMe(0x{namespace:X},{'-'.join(f'{b:02X}' for b in body[4:12])})"
    if subtype == 0x05 and len(body) >= 2:
        return f"USB(0x{body[0]:X},0x{body[1]:X})"
    if subtype == 0x02 and len(body) >= 4:
        return "Scsi(0x{:X},0x{:X})".format(*struct.unpack_from("<HH", body))
    return None


def _media(subtype: int, body: bytes) -> str | None:
    if subtype == 0x01 and len(body) >= 38:
        number, start, size = struct.unpack_from("<IQQ", body)
        mbr_type, signature_type = body[36], body[37]
        if signature_type == 2:
            return f"HD({number},GPT,{_guid(body, 20)},0x{start:X},0x{size:X})"
        if signature_type == 1:
            signature = struct.unpack_from("<I", body, 20)[0]
            return f"HD({number},MBR,0x{signature:08X},0x{start:X},0x{size:X})"
        return f"HD({number},{mbr_type},0,0x{start:X},0x{size:X})"
    if subtype == 0x02 and len(body) >= 20:
        entry, start, size = struct.unpack_from("<IQQ", body)
        return f"CDROM(0x{entry:X},0x{start:X},0x{size:X})"
    if subtype == 0x03 and len(body) >= 16:
        return f"VenMedia({_guid(body)})"
    if subtype == 0x04:
        return _utf16(body)
    if subtype == 0x06 and len(body) >= 16:
        return f"FvFile({_guid(body)})"
    if subtype == 0x07 and len(body) >= 16:
        return f"Fv({_guid(body)})"
    if subtype == 0x08 and len(body) >= 20:
        _, start, end = struct.unpack_from("<IQQ", body)
        return f"Offset(0x{start:X},0x{end:X})"
    return None


_FORMATTERS = {0x01: _hardware, 0x02: _acpi, 0x03: _messaging, 0x04: _media}


def format_device_path(data: bytes) -> str:
    """The UEFI text form of a binary device path, e.g. "PciRoot(0x0)/Pci(0x3,0x0)/.../\\EFI\\BOOTX64.EFI"."""
    nodes: list[str] = []
    offset = 0
    while offset + _NODE_HEADER.size <= len(data):
        node_type, subtype, length = _NODE_HEADER.unpack_from(data, offset)
        if length < _NODE_HEADER.size or offset + length > len(data):
            nodes.append(f"Malformed(node at byte {offset} declares length {length})")
            break
        body = data[offset + _NODE_HEADER.size : offset + length]
        offset += length
        if node_type == _END_TYPE:
            if subtype == _END_INSTANCE:
                nodes.append(",")
                continue
            break
        formatter = _FORMATTERS.get(node_type)
        text = formatter(subtype, body) if formatter is not None else None
        nodes.append(text if text is not None else f"Path({node_type},{subtype},{body.hex().upper()})")
    return "/".join(nodes).replace("/,/", ",")
