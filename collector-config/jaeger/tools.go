//go:build tools

// Package tools pins Jaeger v2's command in this module's go.mod and go.sum.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
