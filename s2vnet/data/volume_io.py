"""Reading and writing volumes with their geometry kept (docs/data.md).

S2VNet works on axial slices, so every volume is brought into one *canonical* orientation when it
is read: the voxel axes are reoriented to RAS (nibabel convention: index increasing towards the
patient's Right, Anterior, Superior) and then transposed to ``(z, y, x)``, so ``array[z]`` is
always an axial slice, whatever the axis order and flips stored in the file.

Everything computed in canonical orientation is written back onto the *original* grid (same
affine, same shape, same axis order), so predictions overlay the input in any viewer. The
:class:`VolumeGeometry` returned with every volume holds what that needs.

Formats:

- NIfTI (``.nii``, ``.nii.gz``) through nibabel, keeping the header (qform/sform and their codes).
- MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``) and whatever else SimpleITK reads,
  through SimpleITK. ITK's physical space is LPS; it is converted to nibabel's RAS here and back
  on writing, so a volume read from one format may be written to the other with its world
  geometry intact.
- A folder is a DICOM series, read through SimpleITK/GDCM.

Bad input raises :class:`~s2vnet.utils.errors.InputError` naming the file and the problem; all
writes go through :func:`~s2vnet.utils.atomic.atomic_path`.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Tuple, Union

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from s2vnet.utils.atomic import atomic_path
from s2vnet.utils.errors import InputError

# SimpleITK (a 50 MB package) is imported in the functions that read or write a non-NIfTI format,
# so that NIfTI-only installs can go without it (the GPU check's carried wheels, docs/gpu.md).
if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "Volume",
    "VolumeGeometry",
    "read_label_volume",
    "read_volume",
    "to_original_orientation",
    "warn_if_not_hounsfield",
    "write_label_volume",
    "write_probability_volume",
]

#: Largest |cosine| between two voxel axes still taken as perpendicular (about 0.06 degrees off);
#: beyond it the affine is sheared and reading it warns.
SHEAR_TOLERANCE = 1e-3

#: A CT whose smallest value is at least this cannot be in Hounsfield units: every CT holds air
#: (about -1000 HU) or padding below it. See :func:`warn_if_not_hounsfield`.
HOUNSFIELD_MIN_AT_LEAST = 0.0

#: Largest allowed difference (mm, per affine entry) between a label file's and its image's grid.
#: Label files saved by other tools often carry the image affine rounded to float32, so exact
#: equality is too strict; a thousandth of a millimetre is far below any voxel size.
AFFINE_TOLERANCE_MM = 1e-3

# ITK's physical space is LPS, nibabel's is RAS: the two differ by flipping the first two axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# The RAS orientation in nibabel's (axis, direction) notation: canonical arrays are in it.
_RAS_ORNT = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Formats we write through SimpleITK. Detached-header formats (.mhd + .raw, .nhdr + .raw) are
# left out on purpose: their header names the data file, which breaks when the atomic write
# renames the temporary files.
_ITK_WRITE_SUFFIXES = (".mha", ".nrrd")

# Exceptions nibabel raises for unreadable, corrupt or truncated files (a cut .nii.gz typically
# fails only when the data is decompressed, with EOFError or zlib.error).
_NIBABEL_ERRORS = (ImageFileError, OSError, EOFError, zlib.error, ValueError)
# SimpleITK reports every reader failure as RuntimeError.
_SITK_ERRORS = (RuntimeError, OSError)


# ---------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)  # numpy fields: field-wise == would be ambiguous
class VolumeGeometry:
    """Everything needed to write an array computed in canonical orientation back onto the file's exact grid.

    Attributes:
        affine: 4x4 voxel -> world matrix (RAS, nibabel convention) of the ORIGINAL file, for
            voxel indices in the file's own ``(i, j, k)`` order. For files read through SimpleITK
            it is built from ITK's origin, spacing and direction, converted from LPS to RAS.
        shape: the original array shape in ``(i, j, k)`` order (nibabel's order; for ITK files
            this is ITK's index order, i.e. ``image.GetSize()``).
        ornt: nibabel orientation ``(3, 2)`` array: original axis ``n`` becomes RAS axis
            ``ornt[n, 0]``, flipped when ``ornt[n, 1] == -1``. Derived from ``affine``.
        source_format: ``"nifti"``, ``"itk"`` (MetaImage, NRRD, ...) or ``"dicom"``.
        nifti_header: the original NIfTI header (NIfTI inputs only), so that NIfTI outputs keep
            its qform/sform and their codes bit for bit.
        itk_origin, itk_spacing, itk_direction: ITK's own geometry (LPS, direction row-major)
            for inputs read through SimpleITK, so ITK outputs reproduce it exactly instead of
            going through a float round trip of the affine.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    ornt: np.ndarray = field(default=None)  # type: ignore[assignment]  # filled in __post_init__
    source_format: str = "nifti"
    nifti_header: Optional[nib.Nifti1Header] = None
    itk_origin: Optional[tuple[float, float, float]] = None
    itk_spacing: Optional[tuple[float, float, float]] = None
    itk_direction: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if self.ornt is None:
            self.ornt = io_orientation(self.affine)
        self.ornt = np.asarray(self.ornt, dtype=np.float64)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array, ``(z, y, x)``."""
        ras = [0, 0, 0]
        for axis, size in enumerate(self.shape):
            ras[int(self.ornt[axis, 0])] = size
        return (ras[2], ras[1], ras[0])

    @property
    def canonical_affine(self) -> np.ndarray:
        """4x4 voxel -> world (RAS) matrix of the canonical grid, for indices in ``(x, y, z)`` order.

        This is the affine nibabel would give the reoriented image (``as_closest_canonical``), so
        ``volume.array.transpose(2, 1, 0)`` with this affine is a valid RAS NIfTI. Note the index
        order: the canonical array is indexed ``[z, y, x]``, this matrix takes ``[x, y, z, 1]``.
        """
        return self.affine @ inv_ornt_aff(self.ornt, self.shape)

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the canonical array, ``(z, y, x)`` order."""
        norms = np.linalg.norm(self.canonical_affine[:3, :3], axis=0)
        return (float(norms[2]), float(norms[1]), float(norms[0]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored by the prepare step next to the cached arrays)."""
        header = None
        if self.nifti_header is not None:
            header = {
                "class": type(self.nifti_header).__name__,
                "binaryblock": base64.b64encode(self.nifti_header.binaryblock).decode("ascii"),
            }
        return {
            "affine": self.affine.tolist(),
            "shape": list(self.shape),
            "ornt": self.ornt.tolist(),
            "source_format": self.source_format,
            "nifti_header": header,
            "itk_origin": list(self.itk_origin) if self.itk_origin is not None else None,
            "itk_spacing": list(self.itk_spacing) if self.itk_spacing is not None else None,
            "itk_direction": list(self.itk_direction) if self.itk_direction is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VolumeGeometry":
        """Inverse of :meth:`to_dict`."""
        header = None
        if data.get("nifti_header") is not None:
            header_cls = nib.Nifti2Header if data["nifti_header"]["class"] == "Nifti2Header" else nib.Nifti1Header
            header = header_cls(binaryblock=base64.b64decode(data["nifti_header"]["binaryblock"]))

        def _opt_tuple(key: str) -> Optional[tuple[float, ...]]:
            value = data.get(key)
            return tuple(float(v) for v in value) if value is not None else None

        return cls(
            affine=np.asarray(data["affine"], dtype=np.float64),
            shape=tuple(data["shape"]),  # type: ignore[arg-type]
            ornt=np.asarray(data["ornt"], dtype=np.float64),
            source_format=data.get("source_format", "nifti"),
            nifti_header=header,
            itk_origin=_opt_tuple("itk_origin"),  # type: ignore[arg-type]
            itk_spacing=_opt_tuple("itk_spacing"),  # type: ignore[arg-type]
            itk_direction=_opt_tuple("itk_direction"),
        )


@dataclass(eq=False)  # numpy fields: field-wise == would be ambiguous
class Volume:
    """A volume in canonical orientation.

    Attributes:
        array: axes ``(z, y, x)`` of the RAS-reoriented grid: ``z`` runs inferior -> superior
            (``array[z]`` is an axial slice), ``y`` posterior -> anterior, ``x`` left -> right
            (increasing index = increasing R, A, S world coordinate). For oblique acquisitions
            the axes are the file's voxel axes closest to R, A, S; nothing is resampled.
        spacing: voxel size in mm, ``(z, y, x)`` order, matching the array axes.
        geometry: what is needed to write results back onto the original grid.
        path: the file (or DICOM folder) the volume was read from.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    geometry: VolumeGeometry
    path: str


# ---------------------------------------------------------------------------------------------
# Orientation
# ---------------------------------------------------------------------------------------------


def _to_canonical(data_ijk: np.ndarray, geometry: VolumeGeometry, dtype: Optional[np.dtype]) -> np.ndarray:
    """Reorient an ``(i, j, k)`` array to RAS and transpose it to a contiguous ``(z, y, x)`` array."""
    ras = apply_orientation(data_ijk, geometry.ornt)
    # One copy, into C order: slicing array[z] then touches contiguous memory.
    return np.ascontiguousarray(ras.transpose(2, 1, 0), dtype=dtype)


def to_original_orientation(array_zyx: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Map a canonical ``(z, y, x, ...)`` array back to the file's ``(i, j, k, ...)`` layout.

    The exact inverse of the reorientation done by :func:`read_volume` (a permutation and flips
    of axes, never a resampling). Trailing axes after the first three (e.g. classes) are kept.
    Returns a view where possible.
    """
    array_zyx = np.asarray(array_zyx)
    expected = geometry.canonical_shape
    if array_zyx.ndim < 3 or tuple(array_zyx.shape[:3]) != expected:
        raise ValueError(
            f"array of shape {array_zyx.shape} does not match the canonical (z, y, x) shape {expected} of this geometry"
        )
    extra = tuple(range(3, array_zyx.ndim))
    ras = array_zyx.transpose((2, 1, 0) + extra)
    original = apply_orientation(ras, ornt_transform(_RAS_ORNT, geometry.ornt))
    if tuple(original.shape[:3]) != geometry.shape:  # would mean an inconsistent geometry
        raise ValueError(f"reoriented shape {original.shape[:3]} differs from the original shape {geometry.shape}")
    return original


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Check that a file's array shape is a volume; return its 3D shape (trailing singletons dropped)."""
    if len(shape) < 3:
        raise InputError(f"{path}: expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)}")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise InputError(
            f"{path}: expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)} "
            f"({int(np.prod(extra))} volumes); split it into one file per volume"
        )
    shape3 = tuple(int(s) for s in shape[:3])
    if min(shape3) <= 0:
        raise InputError(f"{path}: the volume has a zero-size dimension, shape {shape3}")
    return shape3  # type: ignore[return-value]


def _check_affine(affine: np.ndarray, path: Path) -> None:
    """Reject affines that do not map voxels to a proper 3D grid."""
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the voxel-to-world affine contains NaN or inf:\n{affine}")
    linear = affine[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    if np.any(norms <= 0):
        raise InputError(
            f"{path}: degenerate affine, voxel axis size(s) are zero (column norms {norms.tolist()}):\n{affine}"
        )
    # Scale-free test for collinear axes: |det| of the column-normalised matrix is 1 for
    # orthogonal axes and 0 for a singular one.
    if abs(np.linalg.det(linear / norms)) < 1e-6:
        raise InputError(f"{path}: degenerate (non-invertible) voxel-to-world affine:\n{affine}")


def _warn_if_sheared(affine: np.ndarray, path: Path) -> None:
    """Warn when the voxel axes are not perpendicular (a shear, e.g. a gantry tilt baked in)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = directions.T @ directions
    if np.allclose(cosines, np.eye(3), atol=SHEAR_TOLERANCE):
        return
    angles = {f"{'ijk'[a]}-{'ijk'[b]}": round(float(np.degrees(np.arccos(np.clip(cosines[a, b], -1, 1)))), 2)
              for a, b in ((0, 1), (0, 2), (1, 2))}
    logger.warning(
        "%s: the voxel axes are sheared (angles between them, degrees: %s; 90 expected). Assumed: "
        "the volume is used on its stored voxel grid, each axis taken as the nearest of R, A, S and "
        "its spacing as the axis length (nothing is resampled), so distances and volumes are "
        "approximate; outputs keep the input's affine. Resample the volume to a non-sheared grid "
        "for exact geometry.",
        path, angles,
    )


def _warn_if_unoriented(header: nib.Nifti1Header, affine: np.ndarray, path: Path) -> None:
    """Warn when a NIfTI header has neither a qform nor an sform: its orientation is unknown."""
    if int(header["qform_code"]) != 0 or int(header["sform_code"]) != 0:
        return
    logger.warning(
        "%s: the NIfTI header has neither a qform nor an sform (both codes 0), so the orientation "
        "of the volume is unknown. Assumed: nibabel's fallback, voxel axes %s with spacing %s mm "
        "and origin at the first voxel. If the true orientation differs, the slices taken as axial "
        "may not be, and left and right may be swapped. Set the file's qform or sform.",
        path, "".join(nib.aff2axcodes(affine)), [round(float(z), 4) for z in header.get_zooms()[:3]],
    )


def _check_numeric(data: np.ndarray, path: Path) -> None:
    if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise InputError(f"{path}: unsupported voxel type {data.dtype} (expected scalar numbers, not RGB/vector data)")
    if np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{path}: complex voxel values ({data.dtype}) are not supported")


def _check_finite(data: np.ndarray, path: Path) -> None:
    if not np.issubdtype(data.dtype, np.floating):
        return
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        raise InputError(
            f"{path}: {bad} of {data.size} voxels are not finite ({n_nan} NaN, {bad - n_nan} inf)"
        )


def _load_nifti(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    try:
        img = nib.load(str(path))
    except _NIBABEL_ERRORS as exc:
        raise InputError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise InputError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    # Shape and affine come from the header: check them before decompressing any data.
    shape3 = _squeeze_to_3d(tuple(img.shape), path)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, path)
    _warn_if_unoriented(img.header, affine, path)
    _warn_if_sheared(affine, path)
    try:
        # nibabel loads lazily: a truncated or corrupt file only fails here.
        data = np.asanyarray(img.dataobj)
    except _NIBABEL_ERRORS as exc:
        raise InputError(
            f"{path}: the file is corrupt or truncated, its voxel data cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    data = data.reshape(shape3)
    geometry = VolumeGeometry(affine=affine, shape=shape3, source_format="nifti", nifti_header=img.header.copy())
    return data, geometry


def _itk_image_to_array(img: sitk.Image, path: Path, source_format: str) -> tuple[np.ndarray, VolumeGeometry]:
    """Convert a SimpleITK image to an ``(i, j, k)`` array and a RAS geometry."""
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel (colour/vector image); "
            "expected a scalar volume"
        )
    dim = img.GetDimension()
    size = tuple(int(s) for s in img.GetSize())
    shape3 = _squeeze_to_3d(size, path)
    spacing = np.asarray(img.GetSpacing()[:3], dtype=np.float64)
    origin = np.asarray(img.GetOrigin()[:3], dtype=np.float64)
    direction_full = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    direction = direction_full[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    _check_affine(affine, path)
    _warn_if_sheared(affine, path)
    try:
        data_kji = sitk.GetArrayFromImage(img)  # numpy order is the reverse of ITK's index order
    except _SITK_ERRORS as exc:
        raise InputError(f"{path}: cannot read the voxel data ({exc})") from exc
    data = data_kji.reshape(shape3[::-1]).transpose(2, 1, 0)
    geometry = VolumeGeometry(
        affine=affine,
        shape=shape3,
        source_format=source_format,
        itk_origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        itk_spacing=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        itk_direction=tuple(float(v) for v in direction.ravel()),
    )
    return data, geometry


def _load_itk_file(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except _SITK_ERRORS as exc:
        hint = ""
        if path.suffix.lower() == ".dcm":
            hint = " (a single DICOM file is one slice: pass the folder of the series)"
        raise InputError(
            f"{path}: cannot read the image: unreadable, corrupt or unsupported format{hint} ({_first_line(exc)})"
        ) from exc
    if img.GetDimension() < 3:
        raise InputError(
            f"{path}: expected a 3D volume, got a {img.GetDimension()}D image of size {tuple(img.GetSize())}"
        )
    return _itk_image_to_array(img, path, "itk")


def _first_line(exc: BaseException) -> str:
    """The informative part of a SimpleITK error.

    Its messages carry C++ file/line context and sometimes a stale ``Reason:`` (errno left over
    from an unrelated call, e.g. "No such file or directory" for a truncated file that exists);
    only the ``ERROR:`` line, without the object address, is worth showing to a user.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "ERROR:" in line:
            reason = line.split("ERROR:", 1)[1].strip()
            return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's stderr warnings (e.g. GDCM's "No Series were found") while we probe a path.

    Whatever matters is turned into an InputError by the caller; the raw warnings would only be
    noise on the console. The global flag is restored afterwards.
    """
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _check_dicom_slice_positions(reader: sitk.ImageSeriesReader, img: sitk.Image, folder: Path) -> None:
    """Refuse series with missing or duplicate slices: ITK would silently assume even spacing."""
    n = img.GetSize()[2] if img.GetDimension() >= 3 else 1
    if n < 3:
        return
    positions = []
    for index in range(n):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            logger.debug("%s: slice %d has no ImagePositionPatient; slice spacing not checked", folder, index)
            return
        try:
            positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            logger.debug("%s: unparsable ImagePositionPatient on slice %d; slice spacing not checked", folder, index)
            return
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    along = np.asarray(positions) @ direction[:, 2]  # position along the slice normal
    steps = np.diff(along)
    median = float(np.median(np.abs(steps)))
    if median <= 0 or np.any(np.abs(np.abs(steps) - median) > max(0.01, 0.1 * median)):
        raise InputError(
            f"{folder}: the DICOM series has uneven slice positions (steps along the slice normal, mm: "
            f"{np.round(steps, 3).tolist()[:20]}); missing or duplicate slices?"
        )


def _load_dicom_folder(folder: Path) -> tuple[np.ndarray, VolumeGeometry]:
    import SimpleITK as sitk

    try:
        with _itk_warnings_off():
            series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except _SITK_ERRORS as exc:
        raise InputError(f"{folder}: cannot scan the folder for DICOM series ({_first_line(exc)})") from exc
    if not series_ids:
        raise InputError(f"{folder}: a folder is read as a DICOM series, but it contains no DICOM series")
    files_by_series = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        others = ", ".join(f"{sid} ({len(files_by_series[sid])} files)" for sid in series_ids if sid != chosen)
        logger.warning(
            "%s holds %d DICOM series; reading %s (%d files), the one with the most files, and ignoring: %s",
            folder, len(series_ids), chosen, len(files_by_series[chosen]), others,
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_series[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags, for the slice position check
    try:
        img = reader.Execute()
    except _SITK_ERRORS as exc:
        raise InputError(f"{folder}: cannot read DICOM series {chosen} ({_first_line(exc)})") from exc
    if img.GetDimension() < 3:
        raise InputError(f"{folder}: DICOM series {chosen} is a {img.GetDimension()}D image, expected a volume")
    _check_dicom_slice_positions(reader, img, folder)
    return _itk_image_to_array(img, folder, "dicom")


def _load_raw(path: PathLike) -> tuple[np.ndarray, VolumeGeometry, Path]:
    """Read any supported input into its native ``(i, j, k)`` array and geometry, validated."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        data, geometry = _load_dicom_folder(path)
    elif _is_nifti_name(path):
        data, geometry = _load_nifti(path)
    else:
        data, geometry = _load_itk_file(path)
    _check_numeric(data, path)
    logger.debug(
        "read %s: shape %s, %s, orientation %s",
        path, geometry.shape, data.dtype, "".join(nib.aff2axcodes(geometry.affine)),
    )
    return data, geometry, path


def read_volume(path: PathLike, dtype: Optional[np.dtype] = np.float32) -> Volume:
    """Read an image volume and bring it to canonical orientation.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``, read with nibabel), another file SimpleITK reads
            (``.mha``, ``.mhd``, ``.nrrd``, ...), or a folder holding a DICOM series. A folder with
            several series reads the one with the most files (and logs a warning naming the rest).
        dtype: dtype of the returned array (default float32); ``None`` keeps the file's type
            (after NIfTI scaling).

    Returns:
        A :class:`Volume` whose ``array`` is ``(z, y, x)`` in RAS orientation.

    Raises:
        InputError: missing, unreadable, corrupt or truncated file; not a 3D volume (2D, or 4D
            with more than one volume; a singleton 4th axis is dropped); zero-size dimension;
            NaN or inf voxels; degenerate affine.
    """
    data, geometry, path = _load_raw(path)
    _check_finite(data, path)
    array = _to_canonical(data, geometry, dtype)
    if np.issubdtype(data.dtype, np.floating) and array.dtype.itemsize < data.dtype.itemsize:
        _check_finite(array, path)  # narrowing (e.g. float64 -> float32) can overflow to inf
    return Volume(array=array, spacing=geometry.canonical_spacing, geometry=geometry, path=str(path))


def warn_if_not_hounsfield(volume: Volume) -> bool:
    """Warn (and return True) when a volume said to be CT does not look like Hounsfield units.

    The heuristic: its smallest value is >= 0 (:data:`HOUNSFIELD_MIN_AT_LEAST`). A CT in HU always
    holds air at about -1000 HU, or padding at -1024 or below; none of it negative means the
    values are stored with an offset, typically HU + 1024 in an unsigned 16-bit file without a
    rescale intercept (air then reads about 0-50, soft tissue about 1024-1100), or already
    normalised. The values are used unchanged, as HU: the abdominal window [-175, 250] HU then
    sees the wrong tissues.
    """
    lowest = float(volume.array.min())
    if lowest < HOUNSFIELD_MIN_AT_LEAST:
        return False
    highest = float(volume.array.max())
    offset_hint = " Values near 1024 suggest HU + 1024: subtract 1024, or store a rescale intercept of -1024 (NIfTI scl_inter)." if highest > 1024 else ""
    logger.warning(
        "%s: CT volume without any negative value (range %g to %g), so it is probably not in "
        "Hounsfield units (CT air is about -1000 HU). Assumed: the values are HU as stored; the "
        "intensity window, and so the segmentation, is likely wrong.%s",
        volume.path, lowest, highest, offset_hint,
    )
    return True


def _grid_difference(label: VolumeGeometry, image: VolumeGeometry) -> Optional[str]:
    """Describe how two canonical grids differ, or return None if they coincide."""
    if label.canonical_shape != image.canonical_shape:
        return (
            f"shape {label.shape} vs {image.shape} "
            f"(canonical z, y, x: {label.canonical_shape} vs {image.canonical_shape})"
        )
    # Comparing canonical grids (rather than raw affines) accepts a label file stored with
    # another axis order or flips, as long as every voxel lands on the same world point.
    diff = np.abs(label.canonical_affine - image.canonical_affine)
    if np.max(diff) > AFFINE_TOLERANCE_MM:
        origin_shift = np.linalg.norm(label.canonical_affine[:3, 3] - image.canonical_affine[:3, 3])
        return (
            f"affines differ by up to {np.max(diff):.4g} mm (tolerance {AFFINE_TOLERANCE_MM} mm; origins "
            f"{origin_shift:.4g} mm apart)\n"
            f"label affine:\n{np.round(label.affine, 4)}\nimage affine:\n{np.round(image.affine, 4)}"
        )
    return None


def _describe_values(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > limit else "")


def read_label_volume(
    path: PathLike, reference: Optional[Volume] = None, num_classes: Optional[int] = None
) -> Volume:
    """Read a label volume (integer class ids) in canonical orientation.

    Labels are never interpolated or cast through float rounding: the array is uint8 when the
    largest label is below 256, else uint16. Float files are accepted only if every value is an
    exact integer.

    Args:
        path: as for :func:`read_volume`.
        reference: the image the labels belong to; its grid must coincide with the labels'
            (same canonical shape, affines equal within :data:`AFFINE_TOLERANCE_MM`).
        num_classes: if given, every label must lie in ``[0, num_classes)``.

    Raises:
        InputError: everything :func:`read_volume` rejects, plus non-integer or negative values,
            values above 65535, a grid that differs from ``reference`` (the message names both
            files), and labels outside ``[0, num_classes)`` (the message lists them).
    """
    data, geometry, path = _load_raw(path)
    if reference is not None:
        difference = _grid_difference(geometry, reference.geometry)
        if difference is not None:
            raise InputError(f"label file {path} does not lie on the grid of image {reference.path}: {difference}")
    if np.issubdtype(data.dtype, np.floating):
        _check_finite(data, path)
        fractional = data != np.round(data)
        if np.any(fractional):
            examples = np.unique(data[fractional])
            raise InputError(
                f"{path}: label volume has {int(np.count_nonzero(fractional))} non-integer voxels "
                f"(e.g. {_describe_values(examples, 5)})"
            )
    if data.size == 0:
        raise InputError(f"{path}: empty label volume")
    lo, hi = data.min(), data.max()
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        bad = np.unique(data[(data < 0) | (data >= num_classes)])
        raise InputError(
            f"{path}: labels outside the {num_classes} classes [0, {num_classes - 1}]: {_describe_values(bad)}"
        )
    if lo < 0:
        raise InputError(f"{path}: negative label values: {_describe_values(np.unique(data[data < 0]))}")
    if hi > np.iinfo(np.uint16).max:
        raise InputError(f"{path}: label value {hi} exceeds 65535, the largest supported class id")
    out_dtype = np.uint8 if hi < 256 else np.uint16
    array = _to_canonical(data, geometry, out_dtype)
    return Volume(array=array, spacing=geometry.canonical_spacing, geometry=geometry, path=str(path))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _output_suffix(path: Path, allowed: tuple[str, ...]) -> str:
    name = path.name.lower()
    for suffix in allowed:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported output format; use one of {', '.join(allowed)}")


def _nifti_output(path: PathLike, array: np.ndarray, ndim: int, what: str, axes: str) -> tuple[Path, str, np.ndarray]:
    """The checks the NIfTI writers start with: ``(path, its suffix, array as an ndarray)``.

    ``what`` and ``axes`` word the error (``"probabilities"``, ``"(C, z, y, x)"``).

    Raises:
        InputError: an output name that is not ``.nii``/``.nii.gz``.
        ValueError: an array without ``ndim`` axes.
    """
    path = Path(path)
    suffix = _output_suffix(path, _NIFTI_SUFFIXES)
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{what} for {path} must be a {axes} array, got shape {array.shape}")
    return path, suffix, array


def _nifti_image(data_ijk: np.ndarray, geometry: VolumeGeometry) -> nib.Nifti1Image:
    """A NIfTI image on the original grid, reusing the input's header when it was NIfTI."""
    if geometry.nifti_header is not None:
        header = geometry.nifti_header.copy()
        header.set_data_dtype(data_ijk.dtype)
        # The input's scaling and display window describe its intensities, not our output.
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"] = 0.0
        header["cal_max"] = 0.0
        header.set_intent("none")
        image_cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # affine=None makes nibabel take qform and sform (with their codes) from the header
        # unchanged, so the output's affine is the input's bit for bit.
        return image_cls(data_ijk, None, header=header)
    image = nib.Nifti1Image(data_ijk, geometry.affine)
    image.header.set_data_dtype(data_ijk.dtype)
    # ITK/DICOM geometry is scanner-based world space: say so in both codes, as ITK does.
    image.set_qform(geometry.affine, code=1)
    image.set_sform(geometry.affine, code=1)
    return image


def _itk_geometry(geometry: VolumeGeometry) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK origin, spacing and direction (LPS) of the original grid."""
    if geometry.itk_origin is not None and geometry.itk_spacing is not None and geometry.itk_direction is not None:
        return geometry.itk_origin, geometry.itk_spacing, geometry.itk_direction
    linear = _LPS_TO_RAS @ geometry.affine[:3, :3]  # the flip is its own inverse
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        logger.warning(
            "the affine has sheared axes, which ITK formats cannot store; the written direction is approximate"
        )
    origin = _LPS_TO_RAS @ geometry.affine[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def _write_array(data_ijk: np.ndarray, geometry: VolumeGeometry, path: Path, suffix: str) -> None:
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in _NIFTI_SUFFIXES:
            nib.save(_nifti_image(data_ijk, geometry), str(tmp))
        else:
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(np.ascontiguousarray(data_ijk.transpose(2, 1, 0)))
            origin, spacing, direction = _itk_geometry(geometry)
            image.SetOrigin(origin)
            image.SetSpacing(spacing)
            image.SetDirection(direction)
            sitk.WriteImage(image, str(tmp), useCompression=True)


def write_label_volume(
    labels: np.ndarray, geometry: VolumeGeometry, path: PathLike, dtype: Optional[np.dtype] = None
) -> None:
    """Write a canonical ``(z, y, x)`` label array onto the original grid of ``geometry``, atomically.

    The file has the input's affine, shape and axis order, so it overlays the input in any
    viewer. The format follows the extension: ``.nii.gz``/``.nii`` (nibabel; the input's NIfTI
    header, qform/sform and codes are kept when the input was NIfTI) or ``.mha``/``.nrrd``
    (SimpleITK; the input's ITK origin/spacing/direction when it was read through SimpleITK,
    else converted from the affine, RAS -> LPS).

    Args:
        labels: integer (or bool) class ids in canonical orientation.
        geometry: from the :class:`Volume` the labels were computed on.
        path: output file.
        dtype: stored type; default uint8 if the largest label is below 256, else uint16.

    Raises:
        ValueError: wrong shape, non-integer or negative labels, or labels too large for dtype.
        InputError: unsupported output extension.
    """
    path = Path(path)
    suffix = _output_suffix(path, _NIFTI_SUFFIXES + _ITK_WRITE_SUFFIXES)
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels for {path} must be integers, got {labels.dtype}")
    if labels.ndim != 3:
        raise ValueError(f"labels for {path} must be a 3D (z, y, x) array, got shape {labels.shape}")
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    if lo < 0:
        raise ValueError(f"labels for {path} contain negative values (min {lo})")
    if dtype is None:
        if hi > np.iinfo(np.uint16).max:
            raise ValueError(f"labels for {path} go up to {hi}, more than uint16 can hold")
        out_dtype = np.dtype(np.uint8 if hi < 256 else np.uint16)
    else:
        out_dtype = np.dtype(dtype)
        if not np.issubdtype(out_dtype, np.integer) or hi > np.iinfo(out_dtype).max:
            raise ValueError(f"labels for {path} (max {hi}) do not fit dtype {out_dtype}")
    data = to_original_orientation(labels, geometry).astype(out_dtype, copy=False)
    _write_array(data, geometry, path, suffix)
    logger.debug("wrote labels %s: shape %s, %s", path, data.shape, out_dtype)


def write_probability_volume(probs: np.ndarray, geometry: VolumeGeometry, path: PathLike) -> None:
    """Write per-class probabilities ``(C, z, y, x)`` as a 4D NIfTI on the original grid, classes last.

    The file is ``(i, j, k, C)`` float32 (NIfTI has no float16) with the input's affine, and its
    NIfTI header when the input was NIfTI. Written atomically.

    Raises:
        ValueError: wrong shape or non-finite values.
        InputError: an output name that is not ``.nii``/``.nii.gz``.
    """
    path, suffix, probs = _nifti_output(path, probs, 4, "probabilities", "(C, z, y, x)")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"probabilities for {path} contain NaN or inf")
    data = to_original_orientation(np.moveaxis(probs, 0, -1), geometry).astype(np.float32, copy=False)
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(_nifti_image(data, geometry), str(tmp))
    logger.debug("wrote probabilities %s: shape %s", path, data.shape)


def original_to_canonical_index(geometry: VolumeGeometry, ijk: Sequence[int]) -> Tuple[int, int, int]:
    """Map a voxel index of the original file grid to (z, y, x) of the canonical array."""
    shape = geometry.shape
    for axis, (value, size) in enumerate(zip(ijk, shape)):
        if not 0 <= int(value) <= size - 1:
            raise InputError(f"voxel index {tuple(ijk)} is outside the volume of shape {tuple(shape)} (axis {axis})")
    canonical = [0, 0, 0]  # (x, y, z) = RAS order
    for axis, value in enumerate(ijk):
        ras_axis, flip = int(geometry.ornt[axis, 0]), geometry.ornt[axis, 1]
        canonical[ras_axis] = int(value) if flip > 0 else shape[axis] - 1 - int(value)
    x, y, z = canonical
    return z, y, x


def canonical_to_original_index(geometry: VolumeGeometry, zyx: Sequence[int]) -> Tuple[int, int, int]:
    """Map (z, y, x) of the canonical array to the voxel index (i, j, k) of the original file grid."""
    ras = (int(zyx[2]), int(zyx[1]), int(zyx[0]))
    ijk = [0, 0, 0]
    for axis in range(3):
        ras_axis, flip = int(geometry.ornt[axis, 0]), geometry.ornt[axis, 1]
        ijk[axis] = ras[ras_axis] if flip > 0 else geometry.shape[axis] - 1 - ras[ras_axis]
    return tuple(ijk)


def write_canonical_nifti(array_zyx: np.ndarray, affine: np.ndarray, path: PathLike) -> None:
    """Write an array that is already in canonical ``(z, y, x)`` orientation as a NIfTI file, atomically.

    For volumes made here rather than read from a file (the synthetic phantoms): there is no
    original grid to go back to, so the file's grid is the canonical one. The dtype is kept;
    qform and sform both hold ``affine`` with code 1 (scanner), and the units are millimetres.

    Args:
        array_zyx: 3D array, axes ``(z, y, x)`` in RAS order.
        affine: 4x4 voxel -> world (RAS) matrix for ``(x, y, z)`` indices, as
            :attr:`VolumeGeometry.canonical_affine`.
        path: output ``.nii.gz`` or ``.nii`` file.

    Raises:
        ValueError: not a 3D array, or not a 4x4 affine.
        InputError: an output name that is not ``.nii``/``.nii.gz``.
    """
    path, suffix, array_zyx = _nifti_output(path, array_zyx, 3, "array", "3D (z, y, x)")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine for {path} must be 4x4, got shape {affine.shape}")
    # .T of a C-ordered (z, y, x) array is a Fortran-ordered (x, y, z) view: exactly the layout
    # NIfTI stores, so nibabel writes it without another copy.
    data_xyz = array_zyx.T
    image = _nifti_image(data_xyz, VolumeGeometry(affine=affine, shape=data_xyz.shape))
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, str(tmp))
    logger.debug("wrote %s: shape %s, %s", path, data_xyz.shape, array_zyx.dtype)
