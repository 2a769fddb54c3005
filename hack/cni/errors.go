package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// Error codes: the spec's well-known ones, and Voile's own (>= 100), see docs/cni.md.
const (
	codeNotAvailable       uint = 50 // STATUS: the agent is not ready (spec)
	codeVoileInternal      uint = 100
	codeAttachmentConflict uint = 101
	codePoolExhausted      uint = 102
	codeAddressUnavailable uint = 103
	codeNetworkUnavailable uint = 104
	codeNamespaceRefused   uint = 105
	codeNotReady           uint = 106
	codeMismatch           uint = 107
	codeForbidden          uint = 108
	codeAPIForbidden       uint = 109
)

// codeOf maps the agent's reasons (docs/localapi.md) onto CNI error codes.
var codeOf = map[string]uint{
	"InvalidRequest":      types.ErrInvalidNetworkConfig,
	"InvalidSpec":         types.ErrInvalidNetworkConfig,
	"NetworkNotFound":     types.ErrInvalidNetworkConfig,
	"PodNotFound":         types.ErrInvalidEnvironmentVariables,
	"AttachmentConflict":  codeAttachmentConflict,
	"PoolExhausted":       codePoolExhausted,
	"AddressTaken":        codeAddressUnavailable,
	"AddressExcluded":     codeAddressUnavailable,
	"AddressOutsideCIDR":  codeAddressUnavailable,
	"AddressReserved":     codeAddressUnavailable,
	"NetworkDeleting":     codeNetworkUnavailable,
	"VNIConflict":         codeNetworkUnavailable,
	"NamespaceNotAllowed": codeNamespaceRefused,
	"NamespaceNotFound":   codeNamespaceRefused,
	"NotReady":            codeNotReady,
	"Mismatch":            codeMismatch,
	"Forbidden":           codeForbidden,
	"APIForbidden":        codeAPIForbidden,
}

// cniError turns a failed call to the agent into the CNI error object: a reason of its own
// code first, then anything temporary (or no answer at all) as 11, "try again later".
func cniError(err error, verb string) *types.Error {
	var ae *agentError
	if errors.As(err, &ae) {
		details := fmt.Sprintf("agent reason %s", ae.Reason)
		if ae.Field != "" {
			details += fmt.Sprintf(", field %s", ae.Field)
		}
		if code, ok := codeOf[ae.Reason]; ok {
			return types.NewError(code, fmt.Sprintf("%s: %s", verb, ae.Message), details)
		}
		if ae.Temporary {
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: %s", verb, ae.Message), details)
		}
		return types.NewError(codeVoileInternal, fmt.Sprintf("%s: %s", verb, ae.Message), details)
	}
	var ue *unreachableError
	if errors.As(err, &ue) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: %s", verb, ue.Error()), "")
	}
	return types.NewError(codeVoileInternal, fmt.Sprintf("%s: %v", verb, err), "")
}
